"""The sampler registry: every sampler on an oracle, and on trained toy2d and digits runs through
sample.py's library path, with its count of network evaluations."""

import jax
import numpy as np
import pytest

from diffusion_jax import (
  oracles,
  run_loading,
  sample_lib,
  samplers,
  sampling,
  schedules,
  train_loop,
)
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
  run = jax.jit(
    lambda k: samplers.run(
      spec.__class__(**{**spec.__dict__, "clip_x0": False}), eps_fn, sched, (4000, 2), k
    )
  )
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


def test_full_chain_ancestral_spec_is_plain_ancestral_sampling():
  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", 100, 1e-3, 0.2))
  eps_fn = oracles.eps_fn_for(MIXTURE, sched)
  key = jax.random.key(3)
  x, nfe = samplers.run(samplers.SamplerSpec(clip_x0=False), eps_fn, sched, (64, 2), key)
  expected = sampling.sample(eps_fn, sched, (64, 2), key, clip_x0=False)
  np.testing.assert_allclose(x, expected, atol=1e-6)
  assert int(nfe) == 100


def test_bad_specs_fail_clearly():
  with pytest.raises(ValueError, match="unknown sampler 'nope'"):
    samplers.SamplerSpec("nope")
  with pytest.raises(ValueError, match="eta must lie in"):
    samplers.SamplerSpec("ddim", eta=2.0)
  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", 10))
  with pytest.raises(ValueError, match="at most T = 10"):
    samplers.run(samplers.SamplerSpec("ddim", steps=11), None, sched, (4, 2), jax.random.key(0))


@pytest.mark.parametrize(
  "make_config, steps", [(tiny_configs.toy, 10), (tiny_configs.digits_small, 4)]
)
def test_every_sampler_runs_on_a_trained_run(tmp_path, make_config, steps):
  train_loop.train_and_evaluate(make_config(num_train_steps=4), str(tmp_path))
  run = run_loading.load_run(str(tmp_path))
  for name in samplers.SAMPLERS:
    spec = samplers.SamplerSpec(name, steps=steps, rtol=1e-2, atol=1e-2)
    paths, nfe = sample_lib.sample_and_save(run, str(tmp_path / name), 8, 8, 0, spec, gif=False)
    out = np.load(paths[0])["arr_0"]
    assert out.shape == (8, *run.example_shape) and np.isfinite(out.astype(np.float32)).all(), name
    assert nfe >= steps, (name, nfe)
