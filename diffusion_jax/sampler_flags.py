"""Command-line flags that choose a sampler, shared by sample.py and evaluate.py."""

from collections.abc import Callable

import ml_collections
from absl import flags

from diffusion_jax import respacing, samplers


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
    "spacing", None, list(respacing.KINDS), "Timestep subsequence for fewer than T steps."
  )
  eta = flags.DEFINE_float("eta", None, "DDIM eta in [0, 1].", lower_bound=0.0, upper_bound=1.0)
  variance = flags.DEFINE_enum(
    "variance", None, ["fixedlarge", "fixedsmall"], "ancestral: sigma^2 = beta or beta-tilde."
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
