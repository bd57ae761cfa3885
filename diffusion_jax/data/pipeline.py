"""Deterministic, process-sharded batches with background prefetch over any `Examples`.

Batch s of the global stream holds positions [s*B, (s+1)*B) of the concatenated epoch orders, where
epoch e is a permutation drawn from np.random.default_rng((seed, e)). So a batch depends only on
(seed, step, data): resuming is `iterate(step)`, and processes need no communication.
"""

import functools
import os
import sys
from collections.abc import Callable, Iterator

import grain
import numpy as np

from diffusion_jax.data.examples import Examples

# Batches are built in grain's thread pool; PIL decoding and resizing release the GIL.
_NUM_THREADS = min(8, os.cpu_count() or 1)
_READ_OPTIONS = grain.ReadOptions(num_threads=_NUM_THREADS, prefetch_buffer_size=2 * _NUM_THREADS)


def _prefetch(make: Callable[[int], np.ndarray], start: int, stop: int) -> Iterator[np.ndarray]:
  """Yields make(start), ..., make(stop - 1) in order, computed ahead in background threads."""
  items = grain.MapDataset.range(start, stop).map(make)
  return iter(items.to_iter_dataset(_READ_OPTIONS))


class Dataset:
  """Serves this process's slice of each global batch, and ordered passes for evaluation."""

  def __init__(
    self,
    examples: Examples,
    global_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
  ):
    if examples.num_examples == 0:
      raise ValueError("the dataset has no examples")
    if global_batch_size <= 0 or global_batch_size % process_count:
      raise ValueError(
        f"global batch size {global_batch_size} must be positive and divisible by the "
        f"process count {process_count}"
      )
    if not 0 <= process_index < process_count:
      raise ValueError(f"process index {process_index} is outside [0, {process_count})")
    self._examples = examples
    self._seed = seed
    self._global_batch_size = global_batch_size
    self._batch_size = global_batch_size // process_count
    self._process_index = process_index
    self._process_count = process_count
    # A batch spans at most a few epochs; caching their orders saves redrawing per step.
    self._epoch_order = functools.lru_cache(maxsize=4)(self._draw_epoch_order)

  @property
  def example_shape(self) -> tuple[int, ...]:
    return self._examples.example_shape

  @property
  def num_examples(self) -> int:
    return self._examples.num_examples

  @property
  def is_image(self) -> bool:
    return self._examples.is_image

  @property
  def class_names(self) -> tuple[str, ...]:
    """The classes of a labeled dataset (label k is class_names[k]); () without labels."""
    return self._examples.class_names

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def _draw_epoch_order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng((self._seed, epoch)).permutation(self.num_examples)

  def _batch_indices(self, step: int) -> np.ndarray:
    """Example indices of this process's part of global batch `step`, [local batch size]."""
    if step < 0:
      raise ValueError(f"step must be non-negative, got {step}")
    first = step * self._global_batch_size + self._process_index * self._batch_size
    epochs, offsets = np.divmod(first + np.arange(self._batch_size), self.num_examples)
    indices = np.empty_like(offsets)
    for epoch in np.unique(epochs):
      in_epoch = epochs == epoch
      indices[in_epoch] = self._epoch_order(int(epoch))[offsets[in_epoch]]
    return indices

  def get_batch(self, step: int) -> np.ndarray:
    """Returns this process's part of the global batch at `step`.

    Args:
      step: training step, >= 0.

    Returns:
      float32 [global_batch_size // process_count, *example_shape].
    """
    return self._examples.load(self._batch_indices(step))

  def get_labeled_batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """get_batch(step) with the examples' class labels, int32 [local batch size]."""
    if self._examples.load_labeled is None:
      raise ValueError("this dataset has no class labels; create it with labeled=True")
    return self._examples.load_labeled(self._batch_indices(step))

  def iterate(self, start_step: int = 0, *, labeled: bool = False) -> Iterator:
    """Yields get_batch(start_step), get_batch(start_step + 1), ... forever, prefetched.

    Args:
      start_step: the first step; resuming a run at step s is `iterate(s)`.
      labeled: yield get_labeled_batch's (examples, labels) pairs instead.

    Returns:
      An endless iterator of float32 [local batch size, *example_shape] (or pairs).
    """
    if labeled and self._examples.load_labeled is None:  # here, not in a background thread
      raise ValueError("this dataset has no class labels; create it with labeled=True")
    make = self.get_labeled_batch if labeled else self.get_batch
    return _prefetch(make, start_step, sys.maxsize)

  def _share(self) -> tuple[int, int]:
    """Bounds [lo, hi) of this process's contiguous share of the example indices."""
    n, i, count = self.num_examples, self._process_index, self._process_count
    return i * n // count, (i + 1) * n // count

  def ordered_batches(self, batch_size: int) -> Iterator[np.ndarray]:
    """One unshuffled pass over this process's share of the examples, prefetched.

    Args:
      batch_size: examples per batch; the last batch may be shorter.

    Returns:
      An iterator of float32 [<= batch_size, *example_shape].
    """
    if batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    lo, hi = self._share()
    num_batches = -(-(hi - lo) // batch_size)

    def make(k: int) -> np.ndarray:
      start = lo + k * batch_size
      return self._examples.load(np.arange(start, min(start + batch_size, hi)))

    return _prefetch(make, 0, num_batches)

  def examples_at(self, indices: list[int]) -> np.ndarray:
    """The examples at these positions of `ordered_batches`' order; float32 [N, *example_shape]."""
    lo, hi = self._share()
    bad = [i for i in indices if not 0 <= i < hi - lo]
    if bad:
      raise ValueError(f"example index {bad[0]} is outside [0, {hi - lo})")
    return self._examples.load(lo + np.asarray(indices, np.int64))

  def data_samples(self, n: int) -> np.ndarray:
    """Returns the first n examples of `ordered_batches`, e.g. as a reference for plots.

    Args:
      n: how many, from 1 to the size of this process's share of the examples.

    Returns:
      float32 [n, *example_shape].
    """
    lo, hi = self._share()
    if not 0 < n <= hi - lo:
      raise ValueError(f"asked for {n} data samples; this process holds {hi - lo}")
    return self._examples.load(np.arange(lo, lo + n))
