"""XLA's CPU backend set up for this library's programs before JAX starts it: how many devices it
makes of the cores, and which library runs the convolutions. Both do nothing on GPUs and TPUs.

Devices. One CPU device runs each op of a program across all cores, which leaves the many small
ops of a small network (the digits U-Net's, say) too little work to share. As two devices the batch
splits in halves whose programs run side by side: the digits training step went from 21.9 to
26-30 steps/s on 2 cores, and sampling and Inception scoring run 1.5-1.9x faster
(benchmarks/RESULTS.md). Halves of fewer than MIN_SHARE examples are slower than one device, as
each device also repeats the whole optimizer update: the cifar10-layout step at ch 64 and batch 8
took 289-361 ms on one device against 339-386 ms on two.

Convolutions. jaxlib 0.10 hands convolutions to YNNPACK, which ran the 32x32 ones of that U-Net on
one thread; Eigen's run on all of them (fwd + bwd of a 3x3 conv at 32x32x64: 11.2 ms against
5.4 ms on 2 cores). So where the CPU is one device, the scripts ask XLA for Eigen's through
XLA_FLAGS, on the jaxlib versions that flag was checked on (an unknown XLA flag stops the
process). Not with several devices: there each device's program runs on one core anyway, and
Eigen's convolutions of two devices at once are not safe in jaxlib 0.10.2 (DDIM sampling on two
devices returned different, wrong images for the first few examples of each device's share, from
run to run; on one device its samples equal YNNPACK's, every uint8 pixel).
"""

import os

import jax
import jaxlib

FORCE_FLAG = "--xla_force_host_platform_device_count"
CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
EIGEN_CONVOLUTIONS = f"{CONV_FLAG}=-individual_convolution"
CONV_FLAG_JAXLIBS = ((0, 10),)  # (major, minor) releases known to take CONV_FLAG
MIN_SHARE = 8  # examples per device, at the least, for a training batch to be split


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
  """Whether each of training's micro-batches (batch_size / grad_accum_steps) splits in two
  halves of at least MIN_SHARE examples."""
  half, rest = divmod(batch_size, 2 * grad_accum_steps)
  return rest == 0 and half >= MIN_SHARE


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


def use_eigen_convolutions(
  cpu_devices: int | None, jaxlib_version: str = jaxlib.__version__
) -> bool:
  """Adds EIGEN_CONVOLUTIONS to XLA_FLAGS, before JAX starts its backends, where the CPU is one
  device (`cpu_devices`, as set_cpu_devices returns it: None where the environment sets the
  count, which is left alone), jaxlib is one of CONV_FLAG_JAXLIBS and XLA_FLAGS does not choose
  already. Returns whether it did."""
  flags = os.environ.get("XLA_FLAGS", "")
  release = tuple(int(part) for part in jaxlib_version.split(".")[:2])
  if cpu_devices != 1 or CONV_FLAG in flags or release not in CONV_FLAG_JAXLIBS:
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {EIGEN_CONVOLUTIONS}".strip()
  return True


def set_up(requested: int | None, batches_split: bool = True) -> int | None:
  """set_cpu_devices, then use_eigen_convolutions for the count it set; returns that count."""
  count = set_cpu_devices(requested, batches_split)
  use_eigen_convolutions(count)
  return count
