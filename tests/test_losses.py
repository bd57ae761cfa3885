"""Training objectives: each parametrization's target, the min-SNR and VLB weightings, and L_hybrid
with a learned variance, against hand-written NumPy and the variational bound."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import data, diffusion, losses, models, oracles, parametrization, schedules
from diffusion_jax.likelihood import vlb as likelihood_vlb
from diffusion_jax.training import loop as train_loop
from tests import tiny_configs

SCHED = schedules.make_schedule(schedules.get_beta_schedule("linear", 100, 1e-3, 0.2))
RNG = np.random.default_rng(0)
X0 = jnp.asarray(RNG.normal(size=(6, 3)), jnp.float32)
NOISE = jnp.asarray(RNG.normal(size=(6, 3)), jnp.float32)
T_B = jnp.array([0, 5, 20, 50, 80, 99], jnp.int32)
OUT = jnp.asarray(RNG.normal(size=(6, 3)), jnp.float32)  # what a network outputs


def _abar(t):
  return np.asarray(SCHED.alphas_cumprod, np.float64)[np.asarray(t)][:, None]


@pytest.mark.parametrize("prediction", parametrization.PREDICTIONS)
def test_simple_weighting_is_the_mse_on_each_parametrizations_target(prediction):
  denoiser = parametrization.Denoiser(lambda x, t: OUT, prediction)
  got = losses.diffusion_loss(denoiser, SCHED, X0, T_B, NOISE)
  abar = _abar(T_B)
  a, s = np.sqrt(abar), np.sqrt(1 - abar)
  x0, eps = np.asarray(X0, np.float64), np.asarray(NOISE, np.float64)
  target = {"eps": eps, "x0": x0, "v": a * eps - s * x0}[prediction]
  want = np.mean((np.asarray(OUT, np.float64) - target) ** 2, axis=1)
  np.testing.assert_allclose(got, want, rtol=2e-5)


@pytest.mark.parametrize("prediction", parametrization.PREDICTIONS)
def test_min_snr_is_min_snr_gamma_over_snr_in_eps_units(prediction):
  """Whatever the network predicts, min-SNR-gamma weights its error in eps units by
  min(SNR, gamma) / SNR (Hang et al. 2023): the same loss for the same eps estimate."""
  gamma = 5.0
  eps_net = parametrization.Denoiser(lambda x, t: OUT)
  x_t = diffusion.q_sample(SCHED, X0, T_B, NOISE)
  read = eps_net(SCHED, x_t, T_B)  # the eps prediction OUT, as x0 and v too
  same = {"eps": read.eps, "x0": read.x0, "v": read.v}[prediction]
  denoiser = parametrization.Denoiser(lambda x, t: same, prediction)
  got = losses.diffusion_loss(
    denoiser, SCHED, X0, T_B, NOISE, weighting="min_snr", min_snr_gamma=gamma
  )
  abar = _abar(T_B)[:, 0]
  snr = abar / (1 - abar)
  eps_mse = np.mean((np.asarray(OUT, np.float64) - np.asarray(NOISE, np.float64)) ** 2, axis=1)
  np.testing.assert_allclose(got, np.minimum(snr, gamma) / snr * eps_mse, rtol=2e-4)


def test_vlb_weighting_averages_to_the_bound():
  """T E_t[the vlb loss] is the bound without L_T: summing the loss over every t (one noise draw
  per t, as vlb_terms draws them) gives vlb_terms' total minus its prior, in bits/dim."""
  mix = oracles.GaussianMixture(jnp.ones(1), jnp.zeros((1, 3)), jnp.array([0.5]))
  eps_fn = oracles.eps_fn_for(mix, SCHED)
  key = jax.random.key(3)
  terms = likelihood_vlb.vlb_terms(eps_fn, SCHED, X0, key)
  per_t = []
  for t in range(SCHED.num_timesteps):
    noise = jax.random.normal(jax.random.fold_in(key, t), X0.shape)
    t_B = jnp.full((X0.shape[0],), t, jnp.int32)
    denoiser = parametrization.Denoiser(eps_fn)
    per_t.append(losses.diffusion_loss(denoiser, SCHED, X0, t_B, noise, weighting="vlb"))
  mean_over_t = np.mean(np.stack(per_t), axis=0)  # = (1/T) sum_t T L_t
  want = np.asarray(terms.total_bpd) - np.asarray(terms.prior_bpd)
  np.testing.assert_allclose(mean_over_t, want, rtol=1e-4)


def test_hybrid_loss_trains_only_the_variance_through_the_bound():
  """L_hybrid = L_simple + lambda L_vlb with the mean held fixed: the bound's gradient reaches the
  variance outputs, and the prediction's gradient is L_simple's alone."""

  def loss(out, weight):
    denoiser = parametrization.Denoiser(lambda x, t: out, learned_variance=True)
    return jnp.sum(losses.diffusion_loss(denoiser, SCHED, X0, T_B, NOISE, vlb_weight=weight))

  out = jnp.concatenate([OUT, jnp.zeros_like(OUT)], axis=-1)
  grad_hybrid = jax.grad(loss)(out, 0.001)
  grad_simple = jax.grad(loss)(out, 0.0)
  np.testing.assert_allclose(grad_hybrid[:, :3], grad_simple[:, :3], rtol=1e-6)
  assert np.all(np.asarray(grad_simple[:, 3:]) == 0.0)
  assert np.any(np.abs(np.asarray(grad_hybrid[1:, 3:])) > 0)  # t >= 1: the KL needs the variance


@pytest.mark.slow
def test_learned_variance_trained_with_l_hybrid_has_a_tighter_bound(tmp_path):
  """toy2d moons on a short chain (T = 20, linear betas to 0.5), where the reverse variance
  matters: with a learned variance trained by L_hybrid the bound is below the same network's
  bound with either fixed variance, by more than 3 standard errors of the paired difference
  (measured: 0.027 +- 0.004 bits/dim below fixedlarge, 17.7 below fixedsmall)."""
  config = tiny_configs.toy(num_train_steps=1500)
  config.model.learned_variance = True
  config.model.hidden_dim = 64
  config.diffusion.num_timesteps = 20
  config.diffusion.schedule = "linear"
  config.diffusion.beta_start, config.diffusion.beta_end = 1e-3, 0.5
  config.training.checkpoint_every = 1500
  config.training.sample_every = 0
  state = train_loop.train_and_evaluate(config, str(tmp_path))
  model = models.create_model(config)
  denoiser = models.denoiser(model, state.ema_params, models.parametrization_of(config.model))
  x0 = data.create_dataset(config.data, 2048, config.seed).get_batch(0)
  sched = schedules.schedule_from_config(config.diffusion)
  key = jax.random.key(0)  # the same x_t draws for every variance: a paired comparison
  bpd = {
    variance: np.asarray(
      likelihood_vlb.vlb_terms(denoiser, sched, x0, key, variance=variance).total_bpd, np.float64
    )
    for variance in ("learned", "fixedlarge", "fixedsmall")
  }
  assert np.all(np.isfinite(bpd["learned"]))
  for fixed in ("fixedlarge", "fixedsmall"):
    gain = bpd[fixed] - bpd["learned"]  # per example
    se = gain.std(ddof=1) / math.sqrt(len(gain))
    assert gain.mean() > 3 * se, (fixed, gain.mean(), se)
