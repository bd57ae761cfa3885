"""Data parallelism over a CPU's cores: XLA's CPU client as two devices instead of one.

One CPU device runs each op of a program across all cores, which leaves the many small ops of a
small network (the digits U-Net's convolutions, say) too little work to share. As two devices the
batch splits in halves whose programs run side by side: the digits training step went from 21.9
to 26-30 steps/s on 2 cores, the cifar10-layout step at ch 64 from 444 to 385-402 ms
(benchmarks/RESULTS.md); sampling and Inception scoring run 1.5-1.9x faster. The scripts choose
it before JAX starts its backends; it does nothing on GPUs and TPUs, whose devices they use.
"""

import os

import jax

FORCE_FLAG = "--xla_force_host_platform_device_count"


def available_cores() -> int:
  """The cores this process may run on (all the machine's where the OS cannot say, as on macOS)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def automatic_count(batches_split: bool, cores: int) -> int:
  """2 where there are 2 or more cores and the batches split in two (training's micro-batches
  must; sampling and scoring pad theirs); else 1. More were not found faster where measured."""
  return 2 if cores >= 2 and batches_split else 1


def micro_batches_split(batch_size: int, grad_accum_steps: int = 1) -> bool:
  """Whether each of training's micro-batches (batch_size / grad_accum_steps) splits in two."""
  return batch_size % (2 * grad_accum_steps) == 0


def set_cpu_devices(requested: int | None, batches_split: bool = True) -> int | None:
  """Makes XLA's CPU client `requested` devices, or automatic_count's when None; call it before
  anything touches a device. Returns the count set, or None where the environment sets it
  already (XLA_FLAGS' FORCE_FLAG or JAX_NUM_CPU_DEVICES).

  Raises:
    ValueError: a count is requested and the environment sets one too.
  """
  if FORCE_FLAG in os.environ.get("XLA_FLAGS", "") or os.environ.get("JAX_NUM_CPU_DEVICES"):
    if requested is not None:
      raise ValueError(
        f"--cpu_devices and the environment (XLA_FLAGS' {FORCE_FLAG} or JAX_NUM_CPU_DEVICES) "
        "both set the CPU devices"
      )
    return None
  count = requested or automatic_count(batches_split, available_cores())
  jax.config.update("jax_num_cpu_devices", count)
  return count
