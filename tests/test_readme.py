"""The README's Python examples run as written, and do what they say."""

import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _examples() -> list[str]:
  with open(os.path.join(ROOT, "README.md")) as f:
    return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def _run(source: str, index: int) -> dict:
  namespace = {"__name__": f"readme_example_{index}"}
  exec(compile(source, f"README.md example {index}", "exec"), namespace)
  return namespace


def test_the_readme_has_its_three_examples():
  assert len(_examples()) == 3


def test_library_example():
  out = _run(_examples()[0], 0)
  assert out["samples"].shape == (8, 32, 32, 3)
  assert np.all(np.abs(np.asarray(out["samples"])) <= 1.0)  # images: x0 clipped by default


@pytest.mark.slow
def test_own_network_with_the_librarys_loop():
  out = _run(_examples()[1], 1)
  assert int(out["state"].step) == 200
  assert out["config"].training.num_train_steps == 200


@pytest.mark.slow
def test_librarys_pieces_in_an_own_optax_loop():
  out = _run(_examples()[2], 2)
  points, moons = np.asarray(out["points"]), np.asarray(out["x0"])
  assert points.shape == (512, 2) and np.all(np.isfinite(points))
  # Measured 0.12 after the example's 300 steps; N(0, I) noise scores 0.47.
  assert _sliced_wasserstein(points, moons) < 0.2


def _sliced_wasserstein(a: np.ndarray, b: np.ndarray) -> float:
  """Mean 1-D Wasserstein-1 distance of the projections on 64 fixed directions (quantiles
  matched when the sets differ in size)."""
  theta = np.random.default_rng(0).normal(size=(a.shape[1], 64))
  theta /= np.linalg.norm(theta, axis=0)
  qs = np.linspace(0, 1, min(len(a), len(b)))
  pa, pb = (np.quantile(x @ theta, qs, axis=0) for x in (a, b))
  return float(np.abs(pa - pb).mean())
