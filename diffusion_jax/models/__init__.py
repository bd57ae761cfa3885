"""Denoising networks and the config-driven factory; any Flax module that keeps the call contract.
Also the autoencoder of latent diffusion (`AutoencoderKL`), which is not a denoiser.

The call contract: `module.apply(variables, x_t, t, train=...)` with x_t [B, ...] and t [B]
timestep indices (int32, or float32 for the continuous-time samplers; see `parametrization`)
returns x_t's shape, or twice its channels with a learned variance. The `train` keyword is
optional (dropout uses the 'dropout' rng); a module without it is called without it. A
class-conditional module also takes `y_B=` int labels [B] in 0..num_classes, num_classes being
the null class of classifier-free guidance (`guidance`), and has a `num_classes` field.
"""

import dataclasses
import importlib
import inspect
import json

import flax.linen as nn
import jax
import ml_collections

from diffusion_jax import guidance, parametrization
from diffusion_jax.models.autoencoder import AutoencoderKL
from diffusion_jax.models.classifier import NoisyClassifier
from diffusion_jax.models.layers import COMPUTE_DTYPES
from diffusion_jax.models.mlp import MLP
from diffusion_jax.models.unet import UNet, check_unet_config

__all__ = [
  "AutoencoderKL",
  "COMPUTE_DTYPES",
  "MLP",
  "NoisyClassifier",
  "UNet",
  "apply",
  "classifier_log_prob",
  "create_autoencoder",
  "create_classifier",
  "create_model",
  "denoiser",
  "init",
  "num_classes_of",
  "parametrization_of",
  "record_model",
]

_MODEL_NAMES = ("mlp", "unet")


def parametrization_of(model_config: ml_collections.ConfigDict) -> parametrization.Parametrization:
  """What the configured network predicts (config.model.prediction / learned_variance)."""
  return parametrization.Parametrization(model_config.prediction, model_config.learned_variance)


def _import_module_class(name: str) -> type[nn.Module]:
  """The class that "package.module:ClassName" names."""
  module_name, _, class_name = name.partition(":")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"model.name {name!r}: cannot import {module_name!r} ({e})") from None
  for part in class_name.split(".")[:-1]:  # a class nested in another
    module = getattr(module, part, None)
  class_name = class_name.split(".")[-1]
  cls = getattr(module, class_name, None)
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    raise ValueError(f"model.name {name!r}: {module_name} has no Flax module {class_name!r}")
  return cls


def _unet_fields(config: ml_collections.ConfigDict) -> dict:
  """The U-Net fields of config.model, which the U-Net and the noisy classifier share, checked
  against config.data.image_size (a latent diffusion run's U-Net checks its latents' size when
  called)."""
  m = config.model
  if not config.data.autoencoder_run:
    check_unet_config(config.data.image_size, m.ch, m.ch_mult, m.num_groups, m.attn_resolutions)
  return dict(
    ch=m.ch,
    ch_mult=tuple(m.ch_mult),
    num_res_blocks=m.num_res_blocks,
    attn_resolutions=tuple(m.attn_resolutions),
    dropout=m.dropout,
    num_groups=m.num_groups,
    resamp_with_conv=m.resamp_with_conv,
  )


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """Builds the network config.model names, checking its settings first.

  `model.name` is `unet`, `mlp`, or "package.module:ClassName" of any importable Flax module
  keeping the call contract, constructed with `model.kwargs`.

  Args:
    config: experiment config; reads config.model and config.data.image_size.

  Returns:
    A Linen module called as model.apply(variables, x, t, train=...).

  Raises:
    ValueError: one line naming the setting to change.
  """
  m = config.model
  outputs = parametrization_of(m).output_channels(1)
  if m.name == "mlp":
    return MLP(
      hidden_dim=m.hidden_dim,
      num_layers=m.num_layers,
      dropout=m.dropout,
      outputs_per_channel=outputs,
      dtype=m.dtype,
      num_classes=m.num_classes,
    )
  if m.name == "unet":
    return UNet(
      **_unet_fields(config),
      outputs_per_channel=outputs,
      dtype=m.dtype,
      remat=m.remat,
      num_classes=m.num_classes,
    )
  if ":" in m.name:
    cls = _import_module_class(m.name)
    kwargs = m.kwargs.to_dict() if hasattr(m.kwargs, "to_dict") else dict(m.kwargs)
    try:
      return cls(**kwargs)
    except TypeError as e:
      raise ValueError(f"model.name {m.name!r} with model.kwargs {kwargs}: {e}") from None
  raise ValueError(
    f"unknown model.name {m.name!r}; valid: {', '.join(_MODEL_NAMES)} or 'package.module:Class'"
  )


def create_autoencoder(config: ml_collections.ConfigDict) -> AutoencoderKL:
  """The autoencoder config.model describes (name autoencoder_kl) for config.data's channels."""
  m = config.model
  if m.name != "autoencoder_kl":
    raise ValueError(f"model.name {m.name!r} is not an autoencoder; use autoencoder_kl")
  return AutoencoderKL(
    ch=m.ch,
    ch_mult=tuple(m.ch_mult),
    num_res_blocks=m.num_res_blocks,
    num_groups=m.num_groups,
    latent_channels=m.latent_channels,
    image_channels=config.data.num_channels,
    mid_attention=m.mid_attention,
    dtype=m.dtype,
  )


def create_classifier(config: ml_collections.ConfigDict) -> NoisyClassifier:
  """The noisy-image classifier config.model describes (U-Net fields, num_classes > 0)."""
  m = config.model
  if m.num_classes < 1:
    raise ValueError("a classifier needs model.num_classes > 0")
  if config.data.source == "builtin" and config.data.name != "digits":
    raise ValueError("the noisy classifier takes images; 2D toy data has none")
  return NoisyClassifier(num_classes=m.num_classes, **_unet_fields(config))


def record_model(config: ml_collections.ConfigDict, model: nn.Module) -> ml_collections.ConfigDict:
  """A copy of config whose model.name and model.kwargs rebuild `model` (its class, imported by
  "module:Class", and its dataclass fields, which must be JSON values)."""
  cls = type(model)
  fields = {
    f.name: getattr(model, f.name)
    for f in dataclasses.fields(model)
    if f.init and f.name not in ("parent", "name")
  }
  try:
    json.dumps(fields)
  except TypeError as e:
    raise ValueError(f"{cls.__name__}'s fields must be JSON values to be recorded: {e}") from None
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.name = f"{cls.__module__}:{cls.__qualname__}"
    config.model.kwargs = ml_collections.ConfigDict(fields)
  return config


def _takes_train(model: nn.Module) -> bool:
  return "train" in inspect.signature(type(model).__call__).parameters


def num_classes_of(model: nn.Module) -> int:
  """The classes of a conditional module (its `num_classes` field); 0 for an unconditional one."""
  return int(getattr(model, "num_classes", 0) or 0)


def apply(
  model: nn.Module,
  params,
  x_t: jax.Array,
  t: jax.Array,
  *,
  train: bool,
  rngs=None,
  labels: jax.Array | None = None,
) -> jax.Array:
  """model.apply({'params': params}, x_t, t, train=train[, y_B=labels]), leaving out `train` for
  modules whose __call__ has no such argument; labels [B] only for a conditional module."""
  kwargs = {"train": train} if _takes_train(model) else {}
  if labels is not None:
    if not num_classes_of(model) or "y_B" not in inspect.signature(type(model).__call__).parameters:
      raise ValueError(
        f"{type(model).__name__} is not class-conditional (no num_classes > 0 and y_B argument); "
        "it cannot take labels"
      )
    kwargs["y_B"] = labels
  return model.apply({"params": params}, x_t, t, rngs=rngs, **kwargs)


def init(model: nn.Module, key: jax.Array, x: jax.Array, t: jax.Array) -> dict:
  """The module's initial parameters for inputs like (x, t), in inference mode."""
  kwargs = {"train": False} if _takes_train(model) else {}
  return model.init({"params": key}, x, t, **kwargs)["params"]


def denoiser(
  model: nn.Module,
  params,
  kind: parametrization.Parametrization,
  *,
  labels: jax.Array | None = None,
  guidance_scale: float = 0.0,
) -> parametrization.Denoiser:
  """The network with its parameters, in inference mode, read as `kind` says.

  Args:
    model, params, kind: the network, its parameters and what it predicts.
    labels: for a conditional network, int [B] classes to draw (None: the null class).
    guidance_scale: w of classifier-free guidance (`guidance.classifier_free`); 0: the
      conditional model as trained, one network call per step instead of two.
  """
  if labels is None:
    if guidance_scale:
      raise ValueError("classifier-free guidance needs class labels")
    return kind.denoiser(lambda x_t, t: apply(model, params, x_t, t, train=False))
  network_y = lambda x_t, t, y: apply(model, params, x_t, t, train=False, labels=y)
  if not guidance_scale:
    return kind.denoiser(guidance.with_labels(network_y, labels))
  network = guidance.classifier_free(
    network_y,
    labels,
    num_classes_of(model),
    guidance_scale,
    learned_variance=kind.learned_variance,
  )
  return kind.denoiser(network)


def classifier_log_prob(model: nn.Module, params) -> guidance.ClassifierLogProb:
  """log p_phi(y | x_t, t) of a noisy classifier, per example: what `guidance.classifier_gradient`
  takes."""

  def log_prob(x_t: jax.Array, t: jax.Array, y: jax.Array) -> jax.Array:
    logits = apply(model, params, x_t, t, train=False)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return jax.numpy.take_along_axis(log_p, y[:, None], axis=1)[:, 0]

  return log_prob
