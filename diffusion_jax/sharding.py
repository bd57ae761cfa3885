"""The data-parallel layout: a 1-D ('data',) mesh over every device of every process.

The batch is split along 'data'; parameters and optimizer state are replicated. The same code runs
on one CPU, several GPUs, or a multi-host pod once `jax.distributed.initialize()` has run.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def data_mesh() -> Mesh:
  """A ('data',) mesh over all devices; Auto axes let XLA carry the batch split through layers."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def frames_sharding(mesh: Mesh) -> NamedSharding:
  """For stacked batches [F, B, ...], such as sampling trajectories."""
  return NamedSharding(mesh, P(None, "data"))


def shard_batch(local_batch: np.ndarray, mesh: Mesh) -> jax.Array:
  """Assembles each process's share of the batch into one global array split over 'data'."""
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local_batch)


def shard_global_batch(batch: np.ndarray, mesh: Mesh) -> jax.Array:
  """Splits a batch that every process holds whole (an evaluation pass) over 'data'.

  Each process places only the rows of its own devices, so every example is computed once.
  """
  return jax.make_array_from_callback(batch.shape, batch_sharding(mesh), lambda index: batch[index])


def to_host(tree):
  """The whole value of each array of a tree, as NumPy on every process (a gather across them)."""
  return multihost_utils.process_allgather(tree, tiled=True)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  if batch_size % mesh.size:
    raise ValueError(f"{what} {batch_size} must be a multiple of the device count {mesh.size}")
