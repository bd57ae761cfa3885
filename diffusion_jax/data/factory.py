"""`create_dataset`: builds the configured source and wraps it in the shared batching pipeline."""

import jax
import ml_collections

from diffusion_jax.data import builtin, examples, image_files, pipeline, tfds_source

SOURCES = ("tfds", "folder", "npz", "builtin")


def create_examples(
  data: ml_collections.ConfigDict, seed: int, labeled: bool = False
) -> examples.Examples:
  """Reads `data.source` / `data.name` / `data.path` into preprocessed examples, by index."""
  if data.source in ("folder", "npz") and not data.path:
    # An empty path would mean the current directory: never train on whatever lies there.
    what = "an image folder" if data.source == "folder" else "an .npz file"
    raise ValueError(f"data.source={data.source} needs data.path ({what}); it is empty")
  if data.source == "tfds":
    label_feature = data.get("label_feature", "label") if labeled else ""
    images = tfds_source.TfdsImages(data.name, data.split, data.path or None, label_feature)
  elif data.source == "folder":
    images = image_files.FolderImages(data.path, by_class=labeled)
  elif data.source == "npz":
    images = image_files.load_npz_images(data.path, with_labels=labeled)
  elif data.source == "builtin" and data.name == "digits":
    images = builtin.digits_images()
  elif data.source == "builtin":
    points, labels = builtin.toy_labeled_points(data.name, data.num_points, seed)
    if not labeled:
      return examples.vector_examples(points)
    return examples.vector_examples(points, labels, builtin.toy_class_names(data.name))
  else:
    raise ValueError(f"unknown data.source {data.source!r}; valid: {', '.join(SOURCES)}")
  return examples.image_examples(
    images, data.image_size, data.center_crop, data.num_channels, labeled
  )


def create_dataset(
  data_config: ml_collections.ConfigDict,
  global_batch_size: int,
  seed: int,
  process_index: int | None = None,
  process_count: int | None = None,
  *,
  labeled: bool = False,
) -> pipeline.Dataset:
  """Builds the training data of one process.

  Args:
    data_config: `config.data`; reads source, name, path, split, image_size, center_crop,
      num_channels and num_points.
    global_batch_size: batch size summed over all processes; must divide by process_count.
    seed: fixes the example order (and the points of 2D toys).
    process_index: this process; defaults to jax.process_index().
    process_count: number of processes; defaults to jax.process_count().
    labeled: also serve class labels (`Dataset.get_labeled_batch`): tfds's `data.label_feature`,
      a folder's sub-folders, an .npz's `labels`, the digit, the moon or the mixture component.

  Returns:
    A Dataset whose get_batch(step) is float32 [global_batch_size // process_count, *shape].
  """
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  examples = create_examples(data_config, seed, labeled)
  return pipeline.Dataset(examples, global_batch_size, seed, process_index, process_count)


def split_config(data_config: ml_collections.ConfigDict, split: str) -> ml_collections.ConfigDict:
  """A copy of config.data that reads `split`, which must exist for its source."""
  if split not in ("train", "test"):
    raise ValueError(f"unknown split {split!r}; choose train or test")
  if data_config.source != "tfds" and split != "train":
    raise ValueError(f"data.source {data_config.source!r} has only a train split")
  data_config = ml_collections.ConfigDict(data_config.to_dict())
  data_config.split = split
  return data_config


def default_split(data_config: ml_collections.ConfigDict) -> str:
  """The held-out split where the source has one (tfds), else train."""
  return "test" if data_config.source == "tfds" else "train"
