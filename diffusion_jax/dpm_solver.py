"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep solver of the diffusion
ODE in data prediction, for 10-25 steps of any eps_fn(x, t).

With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) and lambda_t = log(alpha_t / sigma_t), the
step from s = tau_i to t = tau_{i-1} (h = lambda_t - lambda_s) is
  x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D,
  D = (1 + 1 / (2 r)) x0_hat(x_s, s) - 1 / (2 r) x0_hat(x_{s'}, s'),  r = h' / h,
where s' is the previous step's start and h' its h. The first step is first order (D = x0_hat,
which makes it a DDIM eta = 0 step).

The walk ends by denoising fully: after S - 1 steps reach the smallest timestep tau_1, the S-th
model call returns x0_hat(x_{tau_1}, tau_1), which is the first-order step to sigma = 0
(lambda = inf, so e^{-h} = 0 and x_t = D); the second-order D is undefined there (r = 0). Stopping
at x_{tau_1} instead would leave noise of std sigma_{tau_1} in every sample; this way the solver
uses S model calls and ends like DDIM and ancestral sampling, which also return x0_hat at tau_1.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from diffusion_jax import diffusion, respacing, sampling
from diffusion_jax.schedules import Schedule


def dpm_solver_sample(
  eps_fn: sampling.EpsFn,
  sched: Schedule,
  shape: tuple[int, ...],
  key: jax.Array,
  *,
  timesteps: Sequence[int],
  clip_x0: bool = False,
  x_T: jax.Array | None = None,
  sharding=None,
) -> jax.Array:
  """DPM-Solver++(2M) from x_T ~ N(0, I) at tau_S to x0_hat at tau_1; S model calls, no noise.

  x_T is drawn from split(key)[0], as in `sampling.sample` and `ddim.ddim_sample`, so the three
  start from the same point for the same key.

  Args:
    eps_fn: the noise predictor, called with the original timestep indices tau_i.
    sched: the schedule the model was trained with (may be traced).
    shape: [B, ...] shape of the samples.
    key: PRNG key (used for x_T only).
    timesteps: tau_1 < ... < tau_S in 0..T-1 (e.g. `respacing.timestep_subsequence`); a tuple
      when it is a static argument of `jax.jit`.
    clip_x0: clip every x0_hat to [-1, 1] (static thresholding, for data in [-1, 1]).
    x_T: optional starting point [B, ...] instead of one drawn from `key`.
    sharding: optional sharding for x_T (the batch's), when run under jit on a mesh.

  Returns:
    x0 [B, ...].
  """
  taus = respacing.check_timesteps(timesteps, sched.num_timesteps)
  x = sampling._normal(jax.random.split(key)[0], shape, sharding) if x_T is None else x_T
  taus_S = jnp.asarray(taus, jnp.int32)
  alpha, alpha_next = respacing.step_pairs(sched.sqrt_alphas_cumprod, taus, 1.0)
  sigma, sigma_next = respacing.step_pairs(sched.sqrt_one_minus_alphas_cumprod, taus, 0.0)
  lam, lam_next = jnp.log(alpha / sigma), jnp.log(alpha_next / sigma_next)  # lam_next[0] = inf
  h = lam_next - lam  # step i (index i - 1) goes tau_i -> tau_{i-1}; h[0] = inf
  x_coef = sigma_next / sigma
  d_coef = -alpha_next * jnp.expm1(-h)  # -alpha_t (e^{-h} - 1); 1 at the last step
  # 1 / (2 r_i) = h_i / (2 h_{i+1}): step i + 1 runs just before step i. 0 makes a step first order:
  # the first (no previous x0_hat) and the last (to sigma = 0, where r = 0).
  num_steps = len(taus)
  inner = (jnp.arange(num_steps) > 0) & (jnp.arange(num_steps) < num_steps - 1)
  half_inv_r = jnp.where(inner, h / (2.0 * jnp.append(h[1:], 1.0)), 0.0)

  def step(carry, i):
    x, x0_prev = carry
    t_B = jnp.full((shape[0],), taus_S[i], jnp.int32)
    x0 = diffusion.predict_x0_from_eps(sched, x, t_B, eps_fn(x, t_B))
    if clip_x0:
      x0 = jnp.clip(x0, -1.0, 1.0)
    d = x0 + half_inv_r[i] * (x0 - x0_prev)  # D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_hat_prev
    return (x_coef[i] * x + d_coef[i] * d, x0), None

  (x0, _), _ = jax.lax.scan(
    step, (x, jnp.zeros_like(x)), jnp.arange(num_steps - 1, -1, -1, dtype=jnp.int32)
  )
  return x0
