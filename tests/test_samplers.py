"""The sampler registry and driver: every sampler on an oracle and on trained toy2d and digits runs
(through sample.py's library path) with its count of network evaluations; partial chains, hooks,
encoding, parametrizations, the time contract and the defaults that follow the data."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import diffusion, oracles, parametrization, samplers, schedules
from diffusion_jax.cli import sample_outputs
from diffusion_jax.evaluation import run_loading
from diffusion_jax.samplers import chain, registry
from diffusion_jax.training import loop as train_loop
from tests import tiny_configs

MIXTURE = oracles.GaussianMixture(
  weights=np.array([0.3, 0.7], np.float32),
  means=np.array([[-1.0, 0.0], [1.0, 0.5]], np.float32),
  variances=np.array([0.04, 0.09], np.float32),
)
SPECS = [
  (samplers.SamplerSpec("ancestral", steps=100), 100),
  (samplers.SamplerSpec("ddim", steps=50), 50),
  (samplers.SamplerSpec("ddim", steps=100, eta=1.0), 100),
  (samplers.SamplerSpec("dpm_solver++", steps=20), 20),
  (samplers.SamplerSpec("ode_euler", steps=200), 200),
  (samplers.SamplerSpec("ode_heun", steps=50), 100),
  (samplers.SamplerSpec("ode_adaptive", rtol=1e-3, atol=1e-3), None),
  (samplers.SamplerSpec("sde", steps=300, corrector_steps=1, snr=0.1), 600),
]


@pytest.mark.parametrize("spec, expected_nfe", SPECS, ids=lambda v: getattr(v, "name", ""))
def test_every_sampler_reproduces_the_mixture(spec, expected_nfe):
  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", 1000))
  eps_fn = oracles.eps_fn_for(MIXTURE, sched)
  run = jax.jit(lambda k: samplers.sample(eps_fn, sched, (4000, 2), k, spec)[:2])
  x, nfe = run(jax.random.key(0))
  x = np.asarray(x)
  if expected_nfe is not None:
    assert int(nfe) == expected_nfe
  else:
    assert 20 < int(nfe) < 2000
  # Nearest-mean labels: component shares and means within a few standard errors (plus
  # discretisation slack for the few-step samplers).
  labels = np.argmin(((x[:, None] - MIXTURE.means[None]) ** 2).sum(-1), axis=1)
  share = labels.mean()
  assert abs(share - 0.7) < 5 * np.sqrt(0.21 / len(x)) + 0.02, share
  for k in range(2):
    np.testing.assert_allclose(x[labels == k].mean(0), MIXTURE.means[k], atol=0.05)
    ratio = x[labels == k].std(0) / np.sqrt(MIXTURE.variances[k])
    assert np.all((0.8 < ratio) & (ratio < 1.25)), ratio


def test_bad_specs_fail_clearly():
  with pytest.raises(ValueError, match="unknown sampler 'nope'"):
    samplers.SamplerSpec("nope")
  with pytest.raises(ValueError, match="eta must lie in"):
    samplers.SamplerSpec("ddim", eta=2.0)
  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", 10))
  with pytest.raises(ValueError, match="at most T = 10"):
    samplers.sample(None, sched, (4, 2), jax.random.key(0), samplers.SamplerSpec("ddim", steps=11))


@pytest.mark.parametrize(
  "make_config, steps", [(tiny_configs.toy, 10), (tiny_configs.digits_small, 4)]
)
def test_every_sampler_runs_on_a_trained_run(tmp_path, make_config, steps):
  train_loop.train_and_evaluate(make_config(num_train_steps=4), str(tmp_path))
  run = run_loading.load_run(str(tmp_path))
  for name in samplers.SAMPLERS:
    spec = samplers.SamplerSpec(name, steps=steps, rtol=1e-2, atol=1e-2)
    paths, nfe = sample_outputs.sample_and_save(run, str(tmp_path / name), 8, 8, 0, spec, gif=False)
    out = np.load(paths[0])["arr_0"]
    assert out.shape == (8, *run.example_shape) and np.isfinite(out.astype(np.float32)).all(), name
    assert nfe >= steps, (name, nfe)


# --- the composable core: start states, partial chains, hooks, encoding, parametrizations --------

SCHED_100 = schedules.make_schedule(schedules.get_beta_schedule("linear", 100, 1e-3, 0.2))
FIXED_STEP = [
  samplers.SamplerSpec("ancestral"),
  samplers.SamplerSpec("ancestral", steps=20, variance="fixedsmall"),
  samplers.SamplerSpec("ddim", steps=25, eta=0.5),
  samplers.SamplerSpec("dpm_solver++", steps=10),
  samplers.SamplerSpec("ode_euler", steps=30),
  samplers.SamplerSpec("ode_heun", steps=15),
  samplers.SamplerSpec("sde", steps=40, corrector_steps=1),
]
_ids = lambda spec: f"{spec.name}-{spec.steps}"


@pytest.mark.parametrize("spec", [s for s in FIXED_STEP if s.name != "dpm_solver++"], ids=_ids)
def test_a_chain_started_part_way_continues_the_full_chain(spec):
  """Any grid point's state, run on from there with the same key, ends where the full chain ends:
  the driver's noise keys do not depend on where the chain started. (DPM-Solver++(2M) is left
  out: it carries the previous x0 between steps, so its partial chain begins first order.)"""
  denoiser = parametrization.as_denoiser(oracles.eps_fn_for(MIXTURE, SCHED_100))
  times = samplers.grid(spec, SCHED_100)
  sampler = registry.step_sampler(spec, denoiser, SCHED_100, times, clip_x0=False)
  x_T = jax.random.normal(jax.random.key(1), (64, 2))
  step_key = jax.random.key(2)
  full = jax.jit(lambda x: chain.run_chain(sampler, x, step_key, trajectory_every=1))(x_T)
  k0 = sampler.num_steps // 2
  partial = chain.run_chain(sampler, full.trajectory[k0], step_key, start_step=k0)
  np.testing.assert_allclose(partial.x, full.x, rtol=1e-5, atol=1e-5)
  assert int(partial.nfe) == (sampler.num_steps - k0) * sampler.nfe_per_step


def test_sdedit_from_data_keeps_the_data_law():
  """Data noised to t0 by q(x_t0 | x0) and denoised by the exact model is data again (SDEdit):
  the start state's law is exactly q_t0, so the output law is q_0 for any strength. The lower
  the strength, the closer each output stays to its input."""
  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", 1000))
  eps_fn = oracles.eps_fn_for(MIXTURE, sched)
  image = MIXTURE.sample(jax.random.key(5), 4000)
  spec = samplers.SamplerSpec("ddim", steps=100)
  moved = []
  for strength in (0.3, 0.7):
    result = jax.jit(
      lambda k, s=strength: samplers.sample(
        eps_fn, sched, (4000, 2), k, spec, image=image, strength=s
      )
    )(jax.random.key(6))
    x = np.asarray(result.x)
    assert int(result.nfe) == np.sum(
      np.array(samplers.grid(spec, sched)[:-1]) + 1 <= 1000 * strength
    )
    labels = np.argmin(((x[:, None] - MIXTURE.means[None]) ** 2).sum(-1), axis=1)
    assert abs(labels.mean() - 0.7) < 0.03
    for k in range(2):
      np.testing.assert_allclose(x[labels == k].mean(0), MIXTURE.means[k], atol=0.05)
    moved.append(np.linalg.norm(x - np.asarray(image), axis=1).mean())
  unrelated = np.linalg.norm(np.asarray(image) - np.asarray(image)[::-1], axis=1).mean()
  assert moved[0] < moved[1] < unrelated, (moved, unrelated)


def test_a_hook_sees_every_step_and_can_pin_known_values():
  """The inpainting pattern: after each step the hook puts the known coordinate back, noised to
  the time the state is at; the samples end with it exactly, the other coordinate free."""
  sched = SCHED_100
  eps_fn = oracles.eps_fn_for(MIXTURE, sched)
  known = jnp.full((512, 1), 0.25)
  seen = []

  def hook(x, t, key):
    jax.debug.callback(lambda t: seen.append(int(t)), t, ordered=True)
    alpha, sigma = diffusion.noise_level(sched, jnp.full((x.shape[0],), t), x)
    noisy = alpha * known + sigma * jax.random.normal(key, known.shape)
    return x.at[:, :1].set(noisy)

  spec = samplers.SamplerSpec("ancestral", steps=20)
  x = samplers.sample(eps_fn, sched, (512, 2), jax.random.key(3), spec, hook=hook).x
  jax.effects_barrier()
  times = [int(t) for t in samplers.grid(spec, sched)]
  assert seen == times[1:]  # called after each step, with the time reached (-1: clean)
  np.testing.assert_array_equal(x[:, 0], 0.25)
  assert float(jnp.std(x[:, 1])) > 0.1


def _round_trip_error(spec, x0, sched):
  """Mean |decode(encode(x0)) - x0| for the mixture's exact eps, and the latents' std."""
  eps_fn = oracles.eps_fn_for(MIXTURE, sched)
  x_T, nfe = jax.jit(lambda x: samplers.encode(eps_fn, sched, x, spec))(x0)
  assert int(nfe) > 0
  decode = lambda z: samplers.sample(eps_fn, sched, x0.shape, jax.random.key(0), spec, x_T=z).x
  back = jax.jit(decode)(x_T)
  return float(jnp.mean(jnp.abs(back - x0))), float(jnp.std(x_T))


def test_encoding_then_decoding_returns_the_data():
  """Deterministic samplers run upwards map data to latents that look like N(0, I) and back.

  DDIM inversion reads each step's eps at the other end of the step, a first-order mismatch:
  the round trip's error halves when the steps double (measured mean |error| 0.0069 at 250 steps,
  0.0032 at 500, 0.0016 at 1000; points near the boundary between modes move most). The
  probability-flow ODE inverts to the solver's accuracy."""
  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", 1000))
  x0 = MIXTURE.sample(jax.random.key(7), 1024)
  errors = []
  for steps in (250, 500):
    error, latent_std = _round_trip_error(samplers.SamplerSpec("ddim", steps=steps), x0, sched)
    assert abs(latent_std - 1.0) < 0.1
    errors.append(error)
  assert errors[1] < 0.005 and 1.6 < errors[0] / errors[1] < 2.5, errors
  for spec in (
    samplers.SamplerSpec("ode_heun", steps=100),
    samplers.SamplerSpec("ode_adaptive", rtol=1e-5, atol=1e-5),
  ):
    error, latent_std = _round_trip_error(spec, x0, sched)
    assert abs(latent_std - 1.0) < 0.1
    assert error < 1e-3, (spec.name, error)


def test_stochastic_samplers_do_not_encode():
  with pytest.raises(ValueError, match="not deterministic"):
    samplers.encode(None, SCHED_100, jnp.zeros((2, 2)), samplers.SamplerSpec("ddim", eta=0.5))
  with pytest.raises(ValueError, match="not deterministic"):
    samplers.encode(None, SCHED_100, jnp.zeros((2, 2)), samplers.SamplerSpec("sde"))


@pytest.mark.parametrize("spec", [*FIXED_STEP, samplers.SamplerSpec("ode_adaptive")], ids=_ids)
def test_x0_and_v_predictions_sample_like_eps(spec):
  """The exact x0* and v* of the mixture give eps*'s samples, path by path (same key)."""
  outputs = {}
  for prediction in parametrization.PREDICTIONS:
    denoiser = oracles.network_for(MIXTURE, SCHED_100, prediction)
    outputs[prediction] = jax.jit(
      lambda k, d=denoiser: samplers.sample(d, SCHED_100, (256, 2), k, spec).x
    )(jax.random.key(4))
  for prediction in ("x0", "v"):
    np.testing.assert_allclose(outputs[prediction], outputs["eps"], rtol=1e-4, atol=2e-4)


def test_defaults_follow_the_data():
  """Vectors are not clipped to [-1, 1] by default, by any sampler; images are."""
  ring = oracles.GaussianMixture(  # a ring of radius 2: 8 components
    weights=jnp.full((8,), 1 / 8),
    means=2.0
    * jnp.stack([jnp.cos(jnp.arange(8) * jnp.pi / 4), jnp.sin(jnp.arange(8) * jnp.pi / 4)], 1),
    variances=jnp.full((8,), 0.01),
  )
  eps_fn = oracles.eps_fn_for(ring, SCHED_100)
  for spec in [*FIXED_STEP, samplers.SamplerSpec("ode_adaptive")]:
    x = samplers.sample(eps_fn, SCHED_100, (512, 2), jax.random.key(0), spec).x
    radius = np.linalg.norm(np.asarray(x), axis=1)
    assert np.median(radius) > 1.8, (spec.name, np.median(radius))
  images = samplers.sample(
    lambda x, t: jnp.zeros_like(x), SCHED_100, (4, 2, 2, 1), jax.random.key(0)
  ).x  # eps = 0 predicts x0 = x_t / alpha, far outside [-1, 1]
  assert float(jnp.max(jnp.abs(images))) <= 1.0
  clipped = samplers.sample(
    eps_fn, SCHED_100, (512, 2), jax.random.key(0), samplers.SamplerSpec(clip_x0=True)
  ).x
  assert float(jnp.max(jnp.abs(clipped))) <= 1.0


class _IntegerTimeMLP(nn.Module):
  """A network whose time embedding is a lookup table: integer timesteps only."""

  @nn.compact
  def __call__(self, x, t):
    return nn.Dense(x.shape[-1])(x) + nn.Embed(100, x.shape[-1])(t)


@pytest.mark.parametrize("name", samplers.SAMPLERS)
def test_integer_time_networks_work_discretely_and_are_refused_in_continuous_time(name):
  net = _IntegerTimeMLP()
  params = net.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,), jnp.int32))
  network = lambda x, t: net.apply(params, x, t)
  spec = samplers.SamplerSpec(name, steps=5)
  if name in samplers.DISCRETE:
    x = samplers.sample(network, SCHED_100, (4, 2), jax.random.key(0), spec).x
    assert x.shape == (4, 2) and bool(jnp.all(jnp.isfinite(x)))
  else:
    with pytest.raises(
      TypeError, match="fractional timesteps .* use ancestral, ddim or dpm_solver"
    ):
      samplers.sample(network, SCHED_100, (4, 2), jax.random.key(0), spec)


def test_wrong_output_shapes_and_scalar_times():
  eps_fn = lambda x, t: jnp.zeros((x.shape[0], 1))  # would broadcast silently against x
  with pytest.raises(ValueError, match=r"returned shape \(4, 1\) for x_t of shape \(4, 2\)"):
    samplers.sample(eps_fn, SCHED_100, (4, 2), jax.random.key(0))
  denoiser = parametrization.Denoiser(lambda x, t: jnp.zeros_like(x) + t[:, None])
  out = denoiser(SCHED_100, jnp.zeros((3, 2)), jnp.int32(7))  # a scalar t is broadcast to [B]
  np.testing.assert_array_equal(out.eps, 7.0)


def test_sampling_under_jit_with_the_schedule_as_an_argument():
  """Respaced ancestral sampling with a traced schedule (its coefficients come from the schedule
  inside the program) equals the eager run."""
  eps_fn = lambda x, t: 0.5 * x
  spec = samplers.SamplerSpec("ancestral", steps=10)
  draw = lambda sched, key: samplers.sample(eps_fn, sched, (16, 2), key, spec).x
  np.testing.assert_allclose(
    jax.jit(draw)(SCHED_100, jax.random.key(1)), draw(SCHED_100, jax.random.key(1)), atol=1e-5
  )


def test_learned_variance_at_its_ends_is_the_fixed_variances():
  """A learned-variance network that outputs u = +1 samples as fixedlarge, u = -1 as fixedsmall."""
  eps_fn = oracles.eps_fn_for(MIXTURE, SCHED_100)
  key = jax.random.key(8)
  for u, fixed in ((1.0, "fixedlarge"), (-1.0, "fixedsmall")):
    network = lambda x, t, u=u: jnp.concatenate([eps_fn(x, t), jnp.full_like(x, u)], axis=-1)
    learned = parametrization.Denoiser(network, learned_variance=True)
    got = samplers.sample(learned, SCHED_100, (64, 2), key, samplers.SamplerSpec(steps=25)).x
    want_spec = samplers.SamplerSpec(steps=25, variance=fixed)
    want = samplers.sample(eps_fn, SCHED_100, (64, 2), key, want_spec).x
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
