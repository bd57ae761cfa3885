"""Data parallelism over a CPU's cores: XLA's CPU client as two devices instead of one.

One CPU device runs each op of a program across all cores, which leaves the many small ops of a
small network (the digits U-Net's convolutions, say) too little work to share. As two devices the
batch splits in halves whose programs run side by side: the digits training step went from 21.9
to 26-30 steps/s on 2 cores, the cifar10-layout step at ch 64 from 444 to 385-402 ms
(benchmarks/RESULTS.md). The training scripts choose it before JAX starts its backends; it does
nothing on GPUs and TPUs, whose devices the scripts use.
"""

import os

import jax
import ml_collections

FORCE_FLAG = "--xla_force_host_platform_device_count"


def available_cores() -> int:
  """The cores this process may run on."""
  return len(os.sched_getaffinity(0))


def automatic_count(config: ml_collections.ConfigDict, cores: int) -> int:
  """2 where there are 2 or more cores and each (micro-)batch of training splits in two; else 1.
  More than 2 were not found faster on the machines measured."""
  micro_batch, remainder = divmod(config.training.batch_size, config.training.grad_accum_steps)
  return 2 if cores >= 2 and not remainder and micro_batch % 2 == 0 else 1


def set_cpu_devices(requested: int | None, config: ml_collections.ConfigDict) -> int | None:
  """Makes XLA's CPU client `requested` devices, or automatic_count's when None; call it before
  anything touches a device. Returns the count set, or None where XLA_FLAGS sets it already.

  Raises:
    ValueError: a count is requested and XLA_FLAGS sets one too.
  """
  if FORCE_FLAG in os.environ.get("XLA_FLAGS", ""):
    if requested is not None:
      raise ValueError(f"--cpu_devices and XLA_FLAGS' {FORCE_FLAG} both set the CPU devices")
    return None
  count = requested or automatic_count(config, available_cores())
  jax.config.update("jax_num_cpu_devices", count)
  return count
