"""Command-line flags shared by the entry scripts: parsing where every bad flag is one `error:`
line, the flags that choose a sampler (sample.py, evaluate.py), and those that set up the devices
(training, sampling and evaluation scripts): a CPU split into several devices, a multi-process run.

On a cluster, `--distributed` lets `jax.distributed.initialize()` detect the processes (SLURM, Open
MPI, TPU pods, ...). Anywhere else, e.g. several processes on one machine, give the coordinator's
address, the process count and each process's id explicitly.
"""

import os
import sys
from collections.abc import Callable

import jax
import ml_collections
from absl import app, flags, logging

from diffusion_jax import samplers
from diffusion_jax.cli import cpu_backend, host_memory
from diffusion_jax.samplers import ancestral, timesteps


def run(main: Callable[[list[str]], None]) -> None:
  """An entry script's `absl.app.run(main)`, parsing with parse_flags, in a process restarted
  once with huge pages for its host memory (`host_memory.restart_with_huge_pages`)."""
  host_memory.restart_with_huge_pages()
  app.run(main, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad flag or a mistyped or ill-typed --config override in one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
  except (AttributeError, KeyError) as e:
    print(f"error: no such config field {_message(e)} (see configs/default.py)", file=sys.stderr)
  except (TypeError, ValueError) as e:
    print(f"error: invalid --config override: {e}", file=sys.stderr)
  sys.exit(1)


def _message(error: BaseException) -> str:
  """The text of an error that ml_collections may have wrapped in another, on one line.

  A mistyped field arrives as AttributeError(KeyError("'field'\\nDid you mean ...?")), whose
  plain str() would print the inner message's quotes and newline escaped.
  """
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = str(error.args[0]) if error.args else str(error)
  return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def check_output_folder(out: str, overwrite: bool) -> None:
  """Refuses an --out that is a file, or a folder that already holds outputs unless --overwrite."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"--out {out} is a file; give a folder for the outputs")
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise ValueError(f"{out} already holds outputs; pass --overwrite or choose another --out")


def define_sampler_flags() -> Callable[[ml_collections.ConfigDict], samplers.SamplerSpec]:
  """Defines --sampler --steps --spacing --eta --variance --rtol --atol --corrector_steps --snr.

  Returns:
    spec_from_flags(sampling_config): the config's SamplerSpec with the flags given overriding it.
  """
  sampler = flags.DEFINE_enum(
    "sampler", None, list(samplers.SAMPLERS), "Sampler (default: the config's, ancestral)."
  )
  steps = flags.DEFINE_integer(
    "steps", None, "Sampler steps (default: the sampler's).", lower_bound=1
  )
  spacing = flags.DEFINE_enum(
    "spacing", None, list(timesteps.KINDS), "Timestep subsequence for fewer than T steps."
  )
  eta = flags.DEFINE_float("eta", None, "DDIM eta in [0, 1].", lower_bound=0.0, upper_bound=1.0)
  variance = flags.DEFINE_enum(
    "variance", None, list(ancestral.VARIANCES), "ancestral: sigma^2 = beta, beta-tilde or learned."
  )
  rtol = flags.DEFINE_float("rtol", None, "ode_adaptive relative tolerance.", lower_bound=0.0)
  atol = flags.DEFINE_float("atol", None, "ode_adaptive absolute tolerance.", lower_bound=0.0)
  corrector = flags.DEFINE_integer(
    "corrector_steps", None, "sde: Langevin corrector steps.", lower_bound=0
  )
  snr = flags.DEFINE_float("snr", None, "sde: corrector signal-to-noise ratio.", lower_bound=0.0)

  def spec_from_flags(sampling_config: ml_collections.ConfigDict) -> samplers.SamplerSpec:
    return samplers.spec_from_config(
      sampling_config,
      name=sampler.value,
      steps=steps.value,
      spacing=spacing.value,
      eta=eta.value,
      variance=variance.value,
      rtol=rtol.value,
      atol=atol.value,
      corrector_steps=corrector.value,
      snr=snr.value,
    )

  return spec_from_flags


def define_device_flags() -> Callable[..., None]:
  """Defines --cpu_devices and the multi-process flags --distributed --coordinator_address
  --num_processes --process_id.

  Returns:
    initialize(batches_split=True): sets up XLA's CPU backend (`cpu_backend`: its devices,
    batches_split saying whether the script's batches split in two, and its convolutions) and
    joins the run the multi-process flags describe, if any. Call it before anything touches a
    device.
  """
  cpu_count = flags.DEFINE_integer(
    "cpu_devices",
    None,
    "Devices XLA's CPU client makes, each taking a share of every batch (default: 2 with 2 or more "
    "cores where training's micro-batches split in halves of 8 or more examples, in a one-process "
    "run; else 1). Unused on GPUs and TPUs.",
    lower_bound=1,
  )
  distributed = flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-process run: jax.distributed.initialize() detects the cluster; the three "
    "flags below override what it detects.",
  )
  address = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port where process 0 serves the coordination service (implies --distributed).",
  )
  num_processes = flags.DEFINE_integer(
    "num_processes", None, "Processes in the run (implies --distributed)."
  )
  process_id = flags.DEFINE_integer(
    "process_id", None, "This process's id in [0, num_processes) (implies --distributed)."
  )

  def initialize(batches_split: bool = True) -> None:
    joins = distributed.value or any(
      value is not None for value in (address.value, num_processes.value, process_id.value)
    )
    # Several processes split the batch already; one that splits its CPU too multiplies the
    # device count the batch must divide by, so that is left to an explicit --cpu_devices.
    split = cpu_backend.set_up(cpu_count.value, batches_split and not joins)
    if joins:
      _join_run(address.value, num_processes.value, process_id.value)
    logging.info("devices: %s", jax.devices())
    if split and split > 1 and jax.default_backend() == "cpu":
      logging.info(
        "the CPU runs as %d devices, each taking a share of a batch (--cpu_devices)", split
      )

  return initialize


def _join_run(address: str | None, num_processes: int | None, process_id: int | None) -> None:
  """jax.distributed.initialize with what the flags give (None: what it detects)."""
  # Only the CPU backend reads this, so it is harmless on accelerators; without a cross-process
  # implementation (older JAX releases default to none), CPU computations spanning processes fail.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=address, num_processes=num_processes, process_id=process_id
  )
