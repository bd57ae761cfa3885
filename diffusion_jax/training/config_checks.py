"""Checks every field of an experiment config for its type and range, with one-line errors.

A value of the wrong kind (`--config.model.ch_mult=abc`) or out of range (`image_size=-8`) would
otherwise surface as a long traceback deep inside the model or the data pipeline, or not at all.
The checks here run before anything is built or written.
"""

import math
from collections.abc import Callable
from typing import Any

import ml_collections

from diffusion_jax import latents, losses, models, parametrization, samplers, schedules
from diffusion_jax.data import factory
from diffusion_jax.metrics import feature_nets
from diffusion_jax.samplers import ancestral, timesteps
from diffusion_jax.training import run_config

Check = Callable[[Any], str | None]  # returns what is wrong with a value, or None


def _integer(lo: int | None = None) -> Check:
  def check(value):
    if isinstance(value, bool) or not isinstance(value, int):
      return "must be an integer"
    if lo is not None and value < lo:
      return f"must be at least {lo}"
    return None

  return check


def _number(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
  def check(value):
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
      return "must be a finite number"
    if value < lo or (lo_open and value == lo) or value > hi or (hi_open and value == hi):
      return f"must lie in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return None

  return check


def _boolean(value) -> str | None:
  return None if isinstance(value, bool) else "must be True or False"


def _boolean_or_none(value) -> str | None:
  return None if value is None or isinstance(value, bool) else "must be True, False or None"


def _string(value) -> str | None:
  return None if isinstance(value, str) else "must be a string"


def _choice(options: tuple) -> Check:
  def check(value):
    if isinstance(value, bool) or value not in options:
      return f"must be one of {', '.join(repr(o) for o in options)}"
    return None

  return check


def _int_tuple(*, nonempty: bool) -> Check:
  def check(value):
    if not isinstance(value, tuple | list) or any(
      isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value
    ):
      return "must be a tuple of positive integers, e.g. (1, 2)"
    if nonempty and not value:
      return "must not be empty"
    return None

  return check


_POSITIVE = _integer(lo=1)
_NON_NEGATIVE = _integer(lo=0)
_PROBABILITY = _number(0.0, 1.0)

FIELD_CHECKS: dict[str, Check] = {
  "seed": _integer(),
  "data.source": _choice(factory.SOURCES),
  "data.name": _string,
  "data.path": _string,
  "data.split": _string,
  "data.image_size": _POSITIVE,
  "data.center_crop": _boolean,
  "data.num_channels": _choice((1, 3)),
  "data.random_flip": _boolean,
  "data.num_points": _POSITIVE,
  "data.label_feature": _string,
  "data.autoencoder_run": _string,
  "data.latent_scale": _number(0.0, math.inf),
  "data.latent_cache": _string,
  "model.name": _string,
  "model.kwargs": lambda value: None,  # a custom module's own arguments, checked by its class
  "model.prediction": _choice(parametrization.PREDICTIONS),
  "model.learned_variance": _boolean,
  "model.ch": _POSITIVE,
  "model.ch_mult": _int_tuple(nonempty=True),
  "model.num_res_blocks": _POSITIVE,
  "model.attn_resolutions": _int_tuple(nonempty=False),
  "model.dropout": _number(0.0, 1.0, hi_open=True),
  "model.num_groups": _POSITIVE,
  "model.resamp_with_conv": _boolean,
  "model.hidden_dim": _POSITIVE,
  "model.num_layers": _POSITIVE,
  "model.dtype": _choice(models.COMPUTE_DTYPES),
  "model.remat": _boolean,
  "model.num_classes": _NON_NEGATIVE,
  "model.latent_channels": _POSITIVE,
  "model.mid_attention": _boolean,
  "model.latent_scale": _number(0.0, math.inf),
  "diffusion.schedule": _choice(schedules.SCHEDULES),
  "diffusion.num_timesteps": _POSITIVE,
  "diffusion.beta_start": _number(0.0, 1.0, lo_open=True, hi_open=True),
  "diffusion.beta_end": _number(0.0, 1.0, lo_open=True, hi_open=True),
  "training.batch_size": _POSITIVE,
  "training.grad_accum_steps": _POSITIVE,
  "training.steps_per_call": _POSITIVE,
  "training.num_train_steps": _NON_NEGATIVE,
  "training.ema_decay": _PROBABILITY,
  "training.log_every": _POSITIVE,
  "training.checkpoint_every": _POSITIVE,
  "training.keep_checkpoints": _POSITIVE,
  "training.sample_every": _NON_NEGATIVE,
  "training.num_sample_images": _POSITIVE,
  "training.loss_weighting": _choice(losses.WEIGHTINGS),
  "training.min_snr_gamma": _number(0.0, math.inf, lo_open=True),
  "training.vlb_weight": _number(0.0, math.inf),
  "training.label_dropout": _PROBABILITY,
  "training.reconstruction_loss": _choice(latents.RECONSTRUCTION_LOSSES),
  "training.kl_weight": _number(0.0, math.inf),
  "optim.learning_rate": _number(0.0, math.inf),
  "optim.warmup_steps": _NON_NEGATIVE,
  "optim.decay_steps": _NON_NEGATIVE,
  "optim.grad_clip": _number(0.0, math.inf),
  "optim.beta1": _number(0.0, 1.0, hi_open=True),
  "optim.beta2": _number(0.0, 1.0, hi_open=True),
  "optim.eps": _number(0.0, math.inf, lo_open=True),
  "sampling.sampler": _choice(samplers.SAMPLERS),
  "sampling.steps": _NON_NEGATIVE,
  "sampling.spacing": _choice(("", *timesteps.KINDS)),
  "sampling.eta": _PROBABILITY,
  "sampling.variance": _choice(("", *ancestral.VARIANCES)),
  "sampling.clip_x0": _boolean_or_none,
  "sampling.batch_size": _POSITIVE,
  "sampling.guidance": _number(0.0, math.inf),
  "eval.feature_net": _choice(feature_nets.FEATURE_NETS),
  "eval.inception_weights": _string,
  "eval.inception_label_map": _string,
  "eval.ref_stats": _string,
  "eval.ref_split": _string,
  "eval.metrics": _string,
  "eval.every_steps": _NON_NEGATIVE,
  "eval.num_samples": _POSITIVE,
  "eval.sampler": _choice(("", *samplers.SAMPLERS)),
  "eval.steps": _NON_NEGATIVE,
}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks that the config has exactly the known fields, each of the right type and range, and
  that the periods of logging, checkpoints, previews and evaluations fit training.steps_per_call.

  Raises:
    ValueError: one line naming the first field that is unknown, missing or wrong.
  """
  flat = run_config.flatten(config.to_dict())
  for field in flat:
    if field not in FIELD_CHECKS:
      raise ValueError(f"config field {field} does not exist (see configs/default.py)")
  for field, check in FIELD_CHECKS.items():
    if field not in flat:
      raise ValueError(f"config field {field} is missing (see configs/default.py)")
    problem = check(flat[field])
    if problem:
      raise ValueError(f"config field {field} {problem}; got {flat[field]!r}")
  _check_steps_per_call(flat)
  if flat["data.latent_cache"] and not flat["data.autoencoder_run"]:
    raise ValueError("config field data.latent_cache caches latents; it needs data.autoencoder_run")


def _check_steps_per_call(flat: dict[str, Any]) -> None:
  """Logs, checkpoints, previews and evaluations happen between jitted calls of steps_per_call
  steps, so their periods must be whole numbers of calls."""
  per_call = flat["training.steps_per_call"]
  for field in ("training.log_every", "training.checkpoint_every"):
    if flat[field] % per_call:
      raise ValueError(
        f"config field {field} must be a multiple of training.steps_per_call {per_call}; "
        f"got {flat[field]}"
      )
  for field in ("training.sample_every", "eval.every_steps"):  # where 0 turns them off
    if flat[field] % per_call:
      raise ValueError(
        f"config field {field} must be 0 or a multiple of training.steps_per_call {per_call}; "
        f"got {flat[field]}"
      )
