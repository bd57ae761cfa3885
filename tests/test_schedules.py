"""Noise schedules against their definitions, recomputed independently in float64 NumPy.

Every reference here is written from the papers' equations (DDPM, Ho et al. 2020; improved DDPM,
Nichol & Dhariwal 2021) with explicit Python loops, not with the library's vectorised formulas:
alpha-bar as a running product, the posterior q(x_{t-1} | x_t, x0) as a product of two Gaussians in
natural parameters. The library stores float32, so each array must match to float32 precision: the
float32 rounding of a float64 value has relative error <= 2**-24 ~ 6e-8, and we allow rtol 1e-6.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffusion_jax import schedules

RTOL32 = 1e-6  # float32 storage of a float64 value: relative error <= 2**-24, with ample margin
NAMES = ("linear", "quad", "const", "jsd", "warmup10", "warmup50", "cosine", "sigmoid")


def _ramp(a: float, b: float, n: int) -> list[float]:
  """n points from a to b inclusive, evenly spaced (one point: a)."""
  if n == 1:
    return [a]
  return [a + (b - a) * i / (n - 1) for i in range(n)]


def reference_betas(name: str, n: int, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
  """beta_1..beta_n from each schedule's written definition, one element at a time."""
  if name == "linear":
    out = _ramp(start, end, n)
  elif name == "quad":
    out = [r * r for r in _ramp(math.sqrt(start), math.sqrt(end), n)]
  elif name == "const":
    out = [end] * n
  elif name == "jsd":
    out = [1.0 / (n - i) for i in range(n)]  # 1/T, 1/(T-1), ..., 1/1
  elif name in ("warmup10", "warmup50"):
    warm = int(n * (0.1 if name == "warmup10" else 0.5))
    out = _ramp(start, end, warm) if warm > 0 else []
    out += [end] * (n - warm)
  elif name == "cosine":
    # Nichol & Dhariwal eq. 17: abar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2),
    # beta_t = 1 - abar(t) / abar(t-1) clipped at 0.999.
    s = 0.008

    def f(t):
      return math.cos((t / n + s) / (1 + s) * math.pi / 2) ** 2

    out = [min(1.0 - (f(t) / f(0)) / (f(t - 1) / f(0)), 0.999) for t in range(1, n + 1)]
  elif name == "sigmoid":
    out = [start + (end - start) / (1.0 + math.exp(-x)) for x in _ramp(-6.0, 6.0, n)]
  else:
    raise AssertionError(name)
  return np.array(out, dtype=np.float64)


def reference_schedule(betas) -> dict[str, np.ndarray]:
  """Every Schedule field in float64, derived independently of the library's formulas."""
  betas = [float(b) for b in betas]
  n = len(betas)
  abar, running = [], 1.0
  log_abar, running_log = [], 0.0
  for b in betas:
    running *= 1.0 - b  # alpha-bar_t = prod_{s <= t} alpha_s, as an explicit loop product
    abar.append(running)
    with np.errstate(divide="ignore"):
      running_log += float(np.log1p(-b))  # -inf once some beta is 1 (jsd)
    log_abar.append(running_log)
  abar = np.array(abar)
  abar_prev = np.array([1.0] + list(abar[:-1]))
  log_abar = np.array(log_abar)
  one_minus_abar = -np.expm1(log_abar)  # accurate where alpha-bar is close to 1

  # Bayes: q(x_{t-1} | x_t, x0) ∝ N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) N(x_{t-1}; sqrt(abar_{t-1})
  # x0, 1 - abar_{t-1}). As a function of x_{t-1} the first factor has precision alpha_t / beta_t
  # and precision-times-mean sqrt(alpha_t) x_t / beta_t; the second has precision
  # 1 / (1 - abar_{t-1}) and precision-times-mean sqrt(abar_{t-1}) x0 / (1 - abar_{t-1}). The
  # product's precision is the sum; its mean is (sum of precision-times-means) / precision, so the
  # x0 and x_t coefficients are the two eta terms divided by the total precision. At the first step
  # (abar_0 = 1) x_{t-1} = x0 is known exactly: variance 0, mean x0.
  post_var, coef1, coef2 = [], [], []
  for t in range(n):
    if t == 0:
      post_var.append(0.0)
      coef1.append(1.0)
      coef2.append(0.0)
      continue
    alpha, beta = 1.0 - betas[t], betas[t]
    prior_var = -math.expm1(float(log_abar[t - 1]))  # 1 - abar_{t-1}
    precision = alpha / beta + 1.0 / prior_var
    post_var.append(1.0 / precision)
    coef1.append(math.sqrt(abar[t - 1]) / prior_var / precision)
    coef2.append(math.sqrt(alpha) / beta / precision)
  post_var = np.array(post_var)
  log_post_var = np.log(post_var[1:]) if n > 1 else np.log(np.array(betas))
  log_clipped = np.concatenate([log_post_var[:1], log_post_var]) if n > 1 else log_post_var

  with np.errstate(divide="ignore"):
    return dict(
      betas=np.array(betas),
      alphas_cumprod=abar,
      log_alphas_cumprod=log_abar,
      alphas_cumprod_prev=abar_prev,
      sqrt_alphas_cumprod=np.exp(0.5 * log_abar),
      sqrt_one_minus_alphas_cumprod=np.sqrt(one_minus_abar),
      log_one_minus_alphas_cumprod=np.log(one_minus_abar),
      sqrt_recip_alphas_cumprod=np.exp(-0.5 * log_abar),
      sqrt_recipm1_alphas_cumprod=np.sqrt(one_minus_abar / abar),
      posterior_variance=post_var,
      posterior_log_variance_clipped=log_clipped,
      posterior_mean_coef1=np.array(coef1),
      posterior_mean_coef2=np.array(coef2),
    )


# --- get_beta_schedule ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [7, 100, 1000])
def test_every_named_schedule_matches_its_definition(name, n):
  betas = schedules.get_beta_schedule(name, n)
  assert betas.dtype == np.float64 and betas.shape == (n,)
  # float64 round-off only; cosine's 1 - ratio loses up to a few ulp of 1 (~2e-16) absolutely.
  np.testing.assert_allclose(betas, reference_betas(name, n), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["linear", "quad", "const", "warmup10", "warmup50", "sigmoid"])
def test_beta_start_and_end_are_honoured(name):
  betas = schedules.get_beta_schedule(name, 50, beta_start=1e-5, beta_end=5e-3)
  np.testing.assert_allclose(betas, reference_betas(name, 50, 1e-5, 5e-3), rtol=1e-12, atol=0)


def test_linear_is_the_papers_1e4_to_002_ramp():
  betas = schedules.get_beta_schedule("linear", 1000)
  assert betas[0] == pytest.approx(1e-4, rel=1e-14)
  assert betas[-1] == pytest.approx(0.02, rel=1e-14)
  np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-9)


def test_quad_is_squares_of_evenly_spaced_square_roots():
  betas = schedules.get_beta_schedule("quad", 300)
  root = np.sqrt(betas)
  assert root[0] == pytest.approx(0.01, rel=1e-14) and betas[-1] == pytest.approx(0.02, rel=1e-14)
  np.testing.assert_allclose(np.diff(root), (math.sqrt(0.02) - 0.01) / 299, rtol=1e-9)


def test_jsd_is_reciprocal_countdown():
  n = 40
  betas = schedules.get_beta_schedule("jsd", n)
  assert betas[0] == pytest.approx(1 / n, rel=1e-14) and betas[-1] == 1.0
  np.testing.assert_allclose(1.0 / betas, np.arange(n, 0, -1), rtol=1e-12)


@pytest.mark.parametrize("name,frac", [("warmup10", 0.1), ("warmup50", 0.5)])
def test_warmup_ramps_then_holds_beta_end(name, frac):
  n = 1000
  warm = int(n * frac)
  betas = schedules.get_beta_schedule(name, n)
  assert betas[0] == pytest.approx(1e-4, rel=1e-14)
  np.testing.assert_allclose(np.diff(betas[:warm]), (0.02 - 1e-4) / (warm - 1), rtol=1e-9)
  np.testing.assert_array_equal(betas[warm - 1 :], 0.02)


def test_cosine_follows_the_squared_cosine_alpha_bar_and_clips_at_0999():
  n, s = 500, 0.008
  betas = schedules.get_beta_schedule("cosine", n, beta_start=0.3, beta_end=0.4)  # both ignored
  t = np.arange(n + 1) / n
  f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
  abar_target = f / f[0]
  abar = np.cumprod(1.0 - betas)
  clipped = betas >= 0.999
  assert betas.max() == 0.999 and clipped[-1]  # abar(T) = 0 would make beta_T = 1
  assert np.all(betas <= 0.999) and np.all(betas > 0)
  first_clip = int(np.argmax(clipped))
  np.testing.assert_allclose(abar[:first_clip], abar_target[1 : first_clip + 1], rtol=1e-9)


def test_sigmoid_is_a_symmetric_ramp_between_start_and_end():
  n, lo, hi = 101, 1e-5, 5e-3
  betas = schedules.get_beta_schedule("sigmoid", n, beta_start=lo, beta_end=hi)
  np.testing.assert_allclose(betas + betas[::-1], lo + hi, rtol=1e-12)
  assert betas[n // 2] == pytest.approx((lo + hi) / 2, rel=1e-12)  # sigmoid(0) = 1/2
  assert betas[0] == pytest.approx(lo + (hi - lo) / (1 + math.exp(6)), rel=1e-12)
  assert np.all(np.diff(betas) > 0)


def test_unknown_schedule_name_raises():
  with pytest.raises(ValueError, match="unknown beta schedule"):
    schedules.get_beta_schedule("cosine2", 10)


@pytest.mark.parametrize("n", [0, -3])
def test_nonpositive_num_timesteps_raises(n):
  with pytest.raises(ValueError):
    schedules.get_beta_schedule("linear", n)


# --- make_schedule --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [2, 10, 1000])
def test_every_schedule_array_is_float32_T_and_matches_float64(name, n):
  sched = schedules.make_schedule(schedules.get_beta_schedule(name, n))
  ref = reference_schedule(reference_betas(name, n))
  fields = [f.name for f in dataclasses.fields(sched) if f.name != "log_alphas_cumprod_remainder"]
  assert sorted(fields) == sorted(ref)
  assert sched.num_timesteps == n
  for field in fields:
    got = getattr(sched, field)
    assert isinstance(got, jax.Array), field
    assert got.dtype == jnp.float32 and got.shape == (n,), field
    want = ref[field].astype(np.float32)  # float32 rounding of the float64 value (inf stays inf)
    np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL32, atol=0, err_msg=field)


def test_paper_schedule_matches_float64_at_float32_precision():
  """The DDPM CIFAR-10 schedule against the float64 values themselves, not their rounding."""
  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", 1000))
  ref = reference_schedule(reference_betas("linear", 1000))
  for field, want in ref.items():
    got = np.asarray(getattr(sched, field), dtype=np.float64)
    np.testing.assert_allclose(got, want, rtol=RTOL32, atol=0, err_msg=field)


def test_first_clipped_log_variance_is_that_of_the_second_step():
  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", 1000))
  assert float(sched.posterior_variance[0]) == 0.0  # beta-tilde_1 = 0 exactly
  log_second = math.log(float(sched.posterior_variance[1]))
  assert float(sched.posterior_log_variance_clipped[0]) == pytest.approx(log_second, rel=RTOL32)
  np.testing.assert_allclose(
    np.asarray(sched.posterior_log_variance_clipped[1:], np.float64),
    np.log(np.asarray(sched.posterior_variance[1:], np.float64)),
    rtol=RTOL32,
  )


def test_jsd_schedule_reaches_alpha_bar_zero():
  sched = schedules.make_schedule(schedules.get_beta_schedule("jsd", 20))
  assert float(sched.alphas_cumprod[-1]) == 0.0
  assert float(sched.sqrt_one_minus_alphas_cumprod[-1]) == 1.0
  assert np.all(np.isfinite(np.asarray(sched.posterior_variance)))


def test_single_step_schedule_has_T_shaped_arrays():
  sched = schedules.make_schedule(np.array([0.3]))
  for field in dataclasses.fields(sched):
    got = getattr(sched, field.name)
    assert got.shape == (1,) and got.dtype == jnp.float32, field.name
  assert float(sched.posterior_variance[0]) == 0.0
  assert float(sched.posterior_log_variance_clipped[0]) == pytest.approx(math.log(0.3), rel=1e-6)


def test_betas_as_a_list_and_betas_of_one_are_accepted():
  want = schedules.make_schedule(np.array([0.1, 0.2, 0.5]))
  got = schedules.make_schedule([0.1, 0.2, 0.5])
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
  assert schedules.make_schedule(np.array([1.0, 1.0])).alphas_cumprod[-1] == 0.0  # beta = 1 is ok


@pytest.mark.parametrize(
  "betas",
  [
    np.array([0.1, 0.0, 0.2]),  # beta = 0
    np.array([0.1, -0.01]),  # negative
    np.array([0.5, 1.5]),  # above 1
    np.array([0.1, np.nan]),
    np.array([]),  # empty
    np.full((2, 3), 0.1),  # not 1-D
    np.array(0.1),  # scalar
  ],
  ids=["zero", "negative", "above_one", "nan", "empty", "2d", "scalar"],
)
def test_bad_betas_raise(betas):
  with pytest.raises(ValueError):
    schedules.make_schedule(betas)


def test_schedule_is_a_pytree_that_passes_through_jit():
  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", 16))
  assert len(jax.tree_util.tree_leaves(sched)) == len(dataclasses.fields(sched))

  @jax.jit
  def twice(s):
    return jax.tree_util.tree_map(lambda a: 2 * a, s)

  doubled = twice(sched)
  assert isinstance(doubled, schedules.Schedule) and doubled.num_timesteps == 16
  np.testing.assert_array_equal(np.asarray(doubled.betas), 2 * np.asarray(sched.betas))


# --- schedule_from_config -------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name,n,start,end",
  [("sigmoid", 100, 1e-5, 5e-3), ("linear", 1000, 1e-4, 0.02), ("cosine", 30, 0, 0)],
)
def test_schedule_from_config(name, n, start, end):
  cfg = ml_collections.ConfigDict(
    dict(schedule=name, num_timesteps=n, beta_start=start, beta_end=end)
  )
  sched = schedules.schedule_from_config(cfg)
  ref = reference_schedule(reference_betas(name, n, start, end))
  assert sched.num_timesteps == n
  for field, want in ref.items():
    got = np.asarray(getattr(sched, field))
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=RTOL32, err_msg=field)


@pytest.mark.parametrize("name", NAMES)
def test_log_abar_split_carries_its_float64_digits(name):
  """log_alphas_cumprod + remainder is log abar to float64 precision (not float32's)."""
  sched = schedules.make_schedule(schedules.get_beta_schedule(name, 1000))
  want = reference_schedule(reference_betas(name, 1000))["log_alphas_cumprod"]
  hi = np.asarray(sched.log_alphas_cumprod, np.float64)
  got = hi + np.asarray(sched.log_alphas_cumprod_remainder, np.float64)
  finite = np.isfinite(want)
  np.testing.assert_allclose(got[finite], want[finite], rtol=1e-13, atol=1e-15)
  assert np.max(np.abs(hi[finite] - want[finite])) > 1e-9  # float32 alone is far coarser


def test_schedule_from_config_rejects_unknown_name():
  cfg = ml_collections.ConfigDict(
    dict(schedule="nope", num_timesteps=10, beta_start=1e-4, beta_end=0.02)
  )
  with pytest.raises(ValueError):
    schedules.schedule_from_config(cfg)
