"""Images of a prepared TensorFlow Datasets split, read by index from array_record (no TF)."""

import tensorflow_datasets as tfds
from PIL import Image

from diffusion_jax.data import transforms


class TfdsImages:
  """Random access to the `image` feature of a tfds split, and optionally a class label feature."""

  def __init__(self, name: str, split: str, data_dir: str | None, label_feature: str = ""):
    # No downloads at run time: a missing dataset should fail fast with instructions instead.
    try:
      self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.DatasetNotFoundError as e:
      raise ValueError(
        f"unknown tfds dataset {name!r}: no such builder in tensorflow_datasets "
        f"{tfds.__version__} (see tfds.list_builders())"
      ) from e
    except (KeyError, NotImplementedError) as e:
      # tfds raises these for a dataset with no generated splits or one stored as TFRecord only.
      where = data_dir or "the default data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
      flag = f" --data_dir={data_dir}" if data_dir else ""
      raise ValueError(
        f"tfds dataset {name!r} is not prepared as array_record in {where}; with network access, "
        f"run `tfds build {name} --file_format=array_record{flag}` first"
      ) from e
    features = self._source.dataset_info.features
    if "image" not in features:
      raise ValueError(f"tfds dataset {name!r} has no 'image' feature (has {list(features)})")
    self.class_names: tuple[str, ...] = ()
    self._label_feature = label_feature
    if label_feature:
      feature = features[label_feature] if label_feature in features else None
      if not isinstance(feature, tfds.features.ClassLabel):
        labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
        raise ValueError(
          f"tfds dataset {name!r} has no class label feature {label_feature!r} "
          f"(class labels: {labels or 'none'}); set data.label_feature"
        )
      self.class_names = tuple(feature.names)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> Image.Image:
    return transforms.array_to_image(self._source[index]["image"])

  def labeled_item(self, index: int) -> tuple[Image.Image, int]:
    record = self._source[index]  # one read decodes both
    return transforms.array_to_image(record["image"]), int(record[self._label_feature])
