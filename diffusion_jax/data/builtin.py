"""Datasets that need no files: scikit-learn's 8x8 digits and the 2D toys of the DDPM tutorial."""

import numpy as np

from diffusion_jax.data import image_files

NAMES = ("digits", "moons", "swiss_roll", "s_curve", "gaussian_mixture")
# The builtins with class labels, and what a label is.
LABELED = ("digits", "moons", "gaussian_mixture")

_NUM_MODES = 8
_MODE_STD = 0.1


def digits_images() -> image_files.ArrayImages:
  """Loads scikit-learn's 1797 handwritten digits, bundled with the package (no download).

  Returns:
    8x8 grayscale images with values 0..16 stretched to uint8 0..255, labelled by their digit
    (classes "0".."9").
  """
  # Imported here: sklearn.datasets takes seconds to import and only builtin data needs it.
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = digits.images  # float [1797, 8, 8], integer values 0..16
  return image_files.ArrayImages(
    np.round(images * (255 / 16)).astype(np.uint8),
    digits.target,
    tuple(str(d) for d in range(10)),
  )


def gaussian_mixture_params() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Parameters of the `gaussian_mixture` toy: 8 equal isotropic modes on the unit circle.

  Returns:
    weights [8] (summing to 1), means [8, 2], covariances [8, 2, 2] (0.1^2 I).
  """
  angles = 2 * np.pi * np.arange(_NUM_MODES) / _NUM_MODES
  weights = np.full(_NUM_MODES, 1 / _NUM_MODES)
  means = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
  covariances = np.broadcast_to(_MODE_STD**2 * np.eye(2), (_NUM_MODES, 2, 2)).copy()
  return weights, means, covariances


def toy_class_names(name: str) -> tuple[str, ...]:
  """The classes of a labeled 2D toy: the moon, or the mixture component, a point came from."""
  if name == "moons":
    return ("upper_moon", "lower_moon")
  if name == "gaussian_mixture":
    return tuple(f"mode{k}" for k in range(_NUM_MODES))
  raise ValueError(f"builtin {name!r} has no class labels; those with labels: {', '.join(LABELED)}")


def toy_points(name: str, num_points: int, seed: int) -> np.ndarray:
  """Draws a 2D toy dataset (see `toy_labeled_points` for its labels).

  Args:
    name: moons, swiss_roll, s_curve or gaussian_mixture.
    num_points: N.
    seed: the same seed gives the same points on every process.

  Returns:
    float32 [N, 2].
  """
  return toy_labeled_points(name, num_points, seed)[0]


def toy_labeled_points(name: str, num_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Draws a 2D toy dataset with the class of each point (all 0 for the unlabeled toys).

  Returns:
    (float32 [N, 2], int32 [N]): the moon (0 upper, 1 lower) or the mixture component.
  """
  from sklearn import datasets

  labels = np.zeros(num_points, np.int64)
  if name == "moons":
    points, labels = datasets.make_moons(num_points, noise=0.1, random_state=seed)
  elif name == "swiss_roll":
    points = datasets.make_swiss_roll(num_points, noise=0.1, random_state=seed)[0][:, [0, 2]] / 10
  elif name == "s_curve":
    points = datasets.make_s_curve(num_points, noise=0.1, random_state=seed)[0][:, [0, 2]] / 10
  elif name == "gaussian_mixture":
    weights, means, _ = gaussian_mixture_params()
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(weights), size=num_points, p=weights)
    points = means[labels] + _MODE_STD * rng.standard_normal((num_points, 2))
  else:
    raise ValueError(f"unknown builtin dataset {name!r}; valid: {', '.join(NAMES)}")
  return points.astype(np.float32), labels.astype(np.int32)
