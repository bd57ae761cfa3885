"""Images of a prepared TensorFlow Datasets split, read by index from array_record (no TF)."""

import tensorflow_datasets as tfds
from PIL import Image

from diffusion_jax.data import transforms


class TfdsImages:
  """Random access to the `image` feature of a tfds split."""

  def __init__(self, name: str, split: str, data_dir: str | None):
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

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> Image.Image:
    return transforms.array_to_image(self._source[index]["image"])
