"""Noise schedules: beta_t in float64 NumPy, and the derived coefficients as a float32 pytree.

Timestep convention: index t = 0..T-1 stands for the paper's step t+1, so `betas[0]` is beta_1 and
`alphas_cumprod[t]` is alpha-bar_{t+1}. Networks are called with this index.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "quad", "const", "jsd", "warmup10", "warmup50", "cosine", "sigmoid")


def _warmup(beta_start: float, beta_end: float, num_timesteps: int, frac: float) -> np.ndarray:
  betas = np.full(num_timesteps, beta_end, dtype=np.float64)
  warmup_steps = int(num_timesteps * frac)
  betas[:warmup_steps] = np.linspace(beta_start, beta_end, warmup_steps, dtype=np.float64)
  return betas


def _cosine(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  # Nichol & Dhariwal (2021), eq. 17: alpha-bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2).
  steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  alpha_bar = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
  return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


def get_beta_schedule(
  name: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
  """Returns beta_1..beta_T as float64 [num_timesteps].

  `linear` is the DDPM paper's (1e-4 to 0.02); `quad`, `const`, `jsd`, `warmup10`, `warmup50` are
  those of the original DDPM code; `cosine` ignores beta_start/end; `sigmoid` is a sigmoid ramp over
  linspace(-6, 6) between beta_start and beta_end (the 2D toy tutorial's).
  """
  if num_timesteps < 1:
    raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
  n = num_timesteps
  if name == "linear":
    betas = np.linspace(beta_start, beta_end, n, dtype=np.float64)
  elif name == "quad":
    betas = np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64) ** 2
  elif name == "const":
    betas = np.full(n, beta_end, dtype=np.float64)
  elif name == "jsd":
    betas = 1.0 / np.linspace(n, 1, n, dtype=np.float64)  # 1/T, 1/(T-1), ..., 1
  elif name == "warmup10":
    betas = _warmup(beta_start, beta_end, n, 0.1)
  elif name == "warmup50":
    betas = _warmup(beta_start, beta_end, n, 0.5)
  elif name == "cosine":
    betas = _cosine(n)
  elif name == "sigmoid":
    ramp = 1.0 / (1.0 + np.exp(-np.linspace(-6, 6, n, dtype=np.float64)))
    betas = ramp * (beta_end - beta_start) + beta_start
  else:
    raise ValueError(f"unknown beta schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
  return betas


@flax.struct.dataclass
class Schedule:
  """Per-timestep coefficients of the forward process and its posterior, each float32 [T]."""

  betas: jax.Array
  alphas_cumprod: jax.Array
  log_alphas_cumprod: jax.Array  # log alpha-bar (rounded from float64)
  # float64 log alpha-bar minus log_alphas_cumprod: the two together carry its float64 digits, so
  # the difference between any two steps (a respaced step's beta) keeps float32 precision.
  log_alphas_cumprod_remainder: jax.Array
  alphas_cumprod_prev: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  log_one_minus_alphas_cumprod: jax.Array
  sqrt_recip_alphas_cumprod: jax.Array
  sqrt_recipm1_alphas_cumprod: jax.Array
  posterior_variance: jax.Array
  posterior_log_variance_clipped: jax.Array
  posterior_mean_coef1: jax.Array
  posterior_mean_coef2: jax.Array

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def make_schedule(betas: np.ndarray) -> Schedule:
  """Derives every coefficient from beta_1..beta_T in float64, then stores them as float32."""
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.size == 0:
    raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
  if not np.all((betas > 0) & (betas <= 1)):
    raise ValueError("betas must lie in (0, 1]")
  alphas = 1.0 - betas
  alphas_cumprod = np.cumprod(alphas)
  alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
  # Posterior q(x_{t-1} | x_t, x0) = N(coef1 x0 + coef2 x_t, beta-tilde_t I), DDPM eqs. 6-7.
  posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
  # beta-tilde_1 = 0, so its log is clipped to beta-tilde_2's as in the original code.
  log_var_clipped = np.log(np.append(posterior_variance[1:2], posterior_variance[1:]))
  if betas.size == 1:
    log_var_clipped = np.log(betas)
  with np.errstate(divide="ignore"):  # `jsd` ends at beta_T = 1, so alpha-bar_T = 0 there
    derived = dict(
      sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
      sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
      log_one_minus_alphas_cumprod=np.log(1.0 - alphas_cumprod),
      log_alphas_cumprod=np.cumsum(np.log1p(-betas)),
    )
  coefs = dict(
    betas=betas,
    alphas_cumprod=alphas_cumprod,
    alphas_cumprod_prev=alphas_cumprod_prev,
    sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
    sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
    **derived,
    posterior_variance=posterior_variance,
    posterior_log_variance_clipped=log_var_clipped,
    posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
    posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
  )
  log_abar = coefs["log_alphas_cumprod"]
  with np.errstate(invalid="ignore"):  # -inf - -inf at a `jsd` schedule's end
    remainder = log_abar - log_abar.astype(np.float32).astype(np.float64)
  coefs["log_alphas_cumprod_remainder"] = np.where(np.isfinite(log_abar), remainder, 0.0)
  return Schedule(**{k: jnp.asarray(v, dtype=jnp.float32) for k, v in coefs.items()})


def schedule_from_config(diffusion_config) -> Schedule:
  """Builds the Schedule named by a config's `diffusion` group."""
  betas = get_beta_schedule(
    diffusion_config.schedule,
    diffusion_config.num_timesteps,
    beta_start=diffusion_config.beta_start,
    beta_end=diffusion_config.beta_end,
  )
  return make_schedule(betas)
