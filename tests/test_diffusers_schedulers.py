"""Our schedules and samplers against diffusers' DDPMScheduler and DDIMScheduler, step by step.

The fixtures (tests/fixtures/make_diffusers_fixtures.py) hold diffusers' trajectories with the
tiny U-Net of tests/fixtures/diffusers_tiny, driven by the noise our samplers draw from
jax.random.key(SEED); here our public samplers run the converted U-Net from the same key.
DDIMScheduler runs with use_clipped_model_output=True, which is what our DDIM computes.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import models, samplers, schedules
from diffusion_jax.pretrained import diffusers_unet
from diffusion_jax.samplers import timesteps

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "diffusers_tiny")
SEED = 0
with open(os.path.join(FIXTURES, "sampler_runs.json")) as f:
  RUNS = {run["name"]: run for run in json.load(f)}
TRAJECTORIES = dict(np.load(os.path.join(FIXTURES, "sampler_runs.npz")))
NOISE = TRAJECTORIES["noise"]  # x_T, then the noise of step indices 0, 1, ...
SHAPE = NOISE.shape[1:]
# max |ours - diffusers| over a state, relative to max(1, max |diffusers state|). Measured:
# <= 3.5e-6 for ancestral sampling; up to 4.4e-5 for DDIM, whose steps from abar ~ 4e-5 amplify
# the U-Nets' float32 differences (~1e-6; with diffusers' own eps the gap is <= 1.7e-5). A wrong
# coefficient, timestep or noise index moves the states by 1e-3 or more.
TOLERANCE = 2e-4


@pytest.fixture(scope="module")
def eps_fn():
  """The converted U-Net, compiled once: the samplers call it on the host, so each sampler
  compiles around a callback instead of recompiling the U-Net."""
  config, params = diffusers_unet.load_diffusers_unet(os.path.join(FIXTURES, "model"))
  model = models.create_model(config)
  apply = jax.jit(lambda x, t: model.apply({"params": params}, x, t))
  return lambda x, t: jax.pure_callback(apply, jax.ShapeDtypeStruct(x.shape, x.dtype), x, t)


def _setup(run):
  """Our schedule, sampling options and timestep subsequence for a run's diffusers scheduler."""
  mapped = diffusers_unet.scheduler_config(run["scheduler"])
  d = mapped["diffusion"]
  betas = schedules.get_beta_schedule(
    d["schedule"], d["num_timesteps"], d["beta_start"], d["beta_end"]
  )
  spacing = run["scheduler"].get("timestep_spacing", "leading")
  taus = timesteps.timestep_subsequence(d["num_timesteps"], run["steps"], spacing)
  assert taus == tuple(reversed(run["timesteps"]))  # diffusers lists them from the noisiest
  return schedules.make_schedule(betas), mapped["sampling"], taus, spacing


def _assert_same_trajectory(ours, name):
  expected = TRAJECTORIES[name]
  assert ours.shape == expected.shape
  np.testing.assert_array_equal(ours[0], NOISE[0])  # x_T
  diff = np.abs(np.asarray(ours) - expected).reshape(len(expected), -1).max(axis=1)
  scale = np.maximum(1.0, np.abs(expected).reshape(len(expected), -1).max(axis=1))
  worst = int(np.argmax(diff / scale))
  assert diff[worst] <= TOLERANCE * scale[worst], (
    f"{name}: state {worst} of {len(expected) - 1} differs by {diff[worst]:.3g}"
  )


def test_stored_noise_is_what_our_key_draws():
  init_key, step_key = jax.random.split(jax.random.key(SEED))
  ours = [jax.random.normal(init_key, SHAPE, jnp.float32)]
  ours += [jax.random.normal(jax.random.fold_in(step_key, i), SHAPE) for i in range(len(NOISE) - 1)]
  assert np.array_equal(np.stack(ours), NOISE), (
    "jax.random draws other numbers from the same key than when the fixtures were made; "
    "regenerate them with tests/fixtures/make_diffusers_fixtures.py"
  )


@pytest.mark.parametrize("name", [n for n in RUNS if n.startswith("ddpm")])
def test_ancestral_steps_like_ddpm_scheduler(eps_fn, name):
  """DDPMScheduler, on all T steps (T = 50) or S = 10 of T = 1000 (leading, trailing spacing):
  its chain on a subsequence is our respaced one, whose beta'_i = 1 - abar_{tau_i} /
  abar_{tau_{i-1}} is its current_beta_t."""
  sched, opts, taus, _ = _setup(RUNS[name])
  spec = samplers.SamplerSpec("ancestral", timesteps=taus, **opts)
  frames = samplers.sample(eps_fn, sched, SHAPE, jax.random.key(SEED), spec, trajectory_every=1)
  _assert_same_trajectory(frames.trajectory, name)


@pytest.mark.parametrize("name", [n for n in RUNS if n.startswith("ddim")])
def test_ddim_steps_like_ddim_scheduler(eps_fn, name):
  """DDIMScheduler, S = 10 of T = 1000, eta 0, 0.5 and 1, clipping on and off."""
  run = RUNS[name]
  sched, opts, taus, _ = _setup(run)
  spec = samplers.SamplerSpec("ddim", timesteps=taus, eta=run["eta"], clip_x0=opts["clip_x0"])
  frames = samplers.sample(eps_fn, sched, SHAPE, jax.random.key(SEED), spec, trajectory_every=1)
  _assert_same_trajectory(frames.trajectory, name)


@pytest.mark.parametrize(
  "name, sampler",
  [("ddpm_leading10_fixed_large", "ancestral"), ("ddim_leading10_eta0.5_clip", "ddim")],
)
def test_sampler_specs_with_diffusers_spacing(eps_fn, name, sampler):
  """samplers.sample with spacing="leading" (what sample.py --spacing=leading builds) ends where
  diffusers does."""
  run = RUNS[name]
  sched, opts, taus, spacing = _setup(run)
  spec = samplers.SamplerSpec(
    name=sampler, steps=len(taus), spacing=spacing, eta=run.get("eta", 0.0), **opts
  )
  x0, nfe, _ = samplers.sample(eps_fn, sched, SHAPE, jax.random.key(SEED), spec)
  assert int(nfe) == len(taus)
  expected = TRAJECTORIES[name][-1]
  assert np.abs(np.asarray(x0) - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max())


SCHEDULES = dict(np.load(os.path.join(FIXTURES, "schedules.npz")))


@pytest.mark.parametrize(
  "name, beta_start, beta_end",
  [
    ("linear", 1e-4, 0.02),
    ("scaled_linear", 0.00085, 0.012),
    ("squaredcos_cap_v2", 1e-4, 0.02),
    ("sigmoid", 1e-4, 0.02),
  ],
)
def test_beta_schedules_match_diffusers(name, beta_start, beta_end):
  """Ours are float64 and diffusers' float32; they agree to float32 precision (alphas_cumprod
  carries diffusers' float32 cumprod error, about 1e-6 relative over 1000 steps)."""
  mapped = diffusers_unet.scheduler_config(
    {"beta_schedule": name, "beta_start": beta_start, "beta_end": beta_end}
  )["diffusion"]
  betas = schedules.get_beta_schedule(mapped["schedule"], 1000, beta_start, beta_end)
  np.testing.assert_allclose(betas, SCHEDULES[f"{name}_betas"], rtol=2e-6)
  np.testing.assert_allclose(
    np.cumprod(1.0 - betas), SCHEDULES[f"{name}_alphas_cumprod"], rtol=2e-5
  )
