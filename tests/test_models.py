"""Tests for the denoisers: timestep embedding, U-Net structure and init, MLP, config checks."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion_jax.configs import cifar10, default, toy2d
from diffusion_jax.models import MLP, UNet, create_model
from diffusion_jax.models.layers import (
  GN_EPSILON,
  GroupNorm,
  single_head_attention,
  timestep_embedding,
)
from diffusion_jax.models.unet import AttnBlock


def _tiny_unet_config(dropout: float = 0.0):
  """A U-Net small enough for a 2-core CPU: 8x8 images, two levels, attention at 4x4."""
  config = default.get_config()
  config.model.update(
    ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4, dropout=dropout
  )
  config.data.image_size = 8
  return config


def _init(model, x, t):
  """Real initialisation, jitted and with RBG keys: same initializers, far faster to compile."""
  key = jax.random.key(0, impl="rbg")
  init = jax.jit(model.init, static_argnames="train")
  return init({"params": key, "dropout": key}, x, t, train=False)["params"]


def _random_params(model, x, t, scale: float = 0.5):
  """N(0, scale^2) parameters of the right shapes, drawn with NumPy (no init to compile)."""
  shapes = jax.eval_shape(lambda: _init(model, x, t))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: scale * rng.standard_normal(s.shape, np.float32), shapes)


def _perturbed(params, scale: float = 0.1):
  """Adds N(0, scale^2) noise to every parameter, moving the net away from its zero-ish init."""
  rng = np.random.default_rng(1)
  return jax.tree.map(
    lambda p: np.asarray(p) + scale * rng.standard_normal(p.shape, np.float32), params
  )


def _images(batch: int = 2, channels: int = 3, size: int = 8):
  return np.random.default_rng(2).standard_normal((batch, size, size, channels), np.float32)


@pytest.fixture(scope="module")
def tiny_unet():
  """The tiny U-Net with dropout 0.5 and its freshly initialised params."""
  model = create_model(_tiny_unet_config(dropout=0.5))
  return model, _init(model, _images(), jnp.zeros((2,), jnp.int32))


# --- timestep embedding ---------------------------------------------------------------------


def _numpy_embedding(t, dim):
  """Independent reference: frequency k is 10000^(-k / (half - 1)); sines, cosines, zero pad."""
  half = dim // 2
  out = np.zeros((len(t), dim))
  for b, tb in enumerate(t):
    for k in range(half):
      angle = tb * 10000.0 ** (-k / (half - 1))
      out[b, k], out[b, half + k] = math.sin(angle), math.cos(angle)
  return out


@pytest.mark.parametrize("dim", [4, 16, 9])
def test_timestep_embedding_matches_numpy(dim):
  t = np.array([0, 1, 17, 999])
  emb = timestep_embedding(jnp.asarray(t, jnp.int32), dim)
  assert emb.shape == (4, dim) and emb.dtype == jnp.float32
  np.testing.assert_allclose(emb, _numpy_embedding(t, dim), atol=2e-4)


def test_timestep_embedding_accepts_float_t():
  t = np.array([0.5, 250.25])
  np.testing.assert_allclose(
    timestep_embedding(jnp.asarray(t), 8), _numpy_embedding(t, 8), atol=2e-4
  )


def test_timestep_embedding_rejects_tiny_dim():
  with pytest.raises(ValueError, match="at least 4, got 2"):
    timestep_embedding(jnp.zeros((1,), jnp.int32), 2)


# --- U-Net ----------------------------------------------------------------------------------


def test_unet_cifar10_parameter_count_matches_paper():
  config = cifar10.get_config()
  model = create_model(config)
  size, channels = config.data.image_size, config.data.num_channels
  shapes = jax.eval_shape(
    lambda: _init(model, jnp.zeros((1, size, size, channels)), jnp.zeros((1,), jnp.int32))
  )
  assert sum(p.size for p in jax.tree.leaves(shapes)) == 35_746_307


def test_unet_output_shape(tiny_unet):
  model, params = tiny_unet
  eps = model.apply({"params": params}, _images(), jnp.array([0, 999]), train=False)
  assert eps.shape == (2, 8, 8, 3) and eps.dtype == jnp.float32


def test_unet_single_channel_output_shape():
  model = create_model(_tiny_unet_config())
  x = _images(channels=1)
  params = _random_params(model, x, jnp.zeros((2,), jnp.int32))
  assert model.apply({"params": params}, x, jnp.array([3, 4])).shape == (2, 8, 8, 1)


def test_unet_average_pool_resampling_has_no_resample_params():
  config = _tiny_unet_config()
  config.model.resamp_with_conv = False
  model = create_model(config)
  params = _random_params(model, _images(), jnp.zeros((2,), jnp.int32))
  assert "down0_downsample" not in params and "up1_upsample" not in params
  assert model.apply({"params": params}, _images(), jnp.array([1, 2])).shape == (2, 8, 8, 3)


def test_unet_fresh_init_predicts_near_zero(tiny_unet):
  model, params = tiny_unet
  eps = model.apply({"params": params}, _images(), jnp.array([5, 500]), train=False)
  perturbed = model.apply(
    {"params": _perturbed(params)}, _images(), jnp.array([5, 500]), train=False
  )
  # conv_out starts at variance scale 1e-10; an ordinary init would give O(0.1..1) outputs.
  assert float(jnp.max(jnp.abs(eps))) < 1e-4
  assert float(jnp.std(perturbed)) > 0.05


def test_unet_init_scales(tiny_unet):
  _, params = tiny_unet
  # fan_avg uniform bound sqrt(3 / ((fan_in + fan_out) / 2)) for conv_in's 3x3x3x16 kernel.
  bound = math.sqrt(3.0 / ((9 * 3 + 9 * 16) / 2))
  conv_in = np.abs(params["conv_in"]["kernel"])
  assert 0.8 * bound < conv_in.max() <= bound
  assert not np.any(params["conv_in"]["bias"])
  zero_ish = [
    params["down0_res0"]["conv2"]["kernel"],
    params["mid_attn"]["proj_out"]["kernel"],
    params["conv_out"]["kernel"],
  ]
  assert all(float(jnp.max(jnp.abs(k))) < 1e-4 for k in zero_ish)


def test_unet_dropout_only_in_training(tiny_unet):
  model, params = tiny_unet
  params = _perturbed(params)
  x, t = _images(), jnp.array([10, 20])
  run = lambda train, seed: model.apply(
    {"params": params}, x, t, train=train, rngs={"dropout": jax.random.key(seed)}
  )
  np.testing.assert_array_equal(run(False, 0), run(False, 1))
  np.testing.assert_array_equal(run(False, 0), model.apply({"params": params}, x, t, train=False))
  assert float(jnp.max(jnp.abs(run(True, 0) - run(True, 1)))) > 1e-3
  assert float(jnp.max(jnp.abs(run(True, 0) - run(False, 0)))) > 1e-3


def test_unet_output_depends_on_t(tiny_unet):
  model, params = tiny_unet
  params = _perturbed(params)
  same_image = jnp.repeat(_images(batch=1), 2, axis=0)
  eps = model.apply({"params": params}, same_image, jnp.array([3, 700]), train=False)
  assert float(jnp.max(jnp.abs(eps[0] - eps[1]))) > 1e-2
  eps_same_t = model.apply({"params": params}, same_image, jnp.array([3, 3]), train=False)
  np.testing.assert_allclose(eps_same_t[0], eps_same_t[1], atol=1e-5)


def _einsum_attention_block(params, x_BxHxWxC, num_groups):
  """The attention block written out: x + proj_out(softmax(q k^T / sqrt(C)) v), q k v of GN(x)."""
  B, H, W, C = x_BxHxWxC.shape
  norm = nn.GroupNorm(num_groups=num_groups, epsilon=GN_EPSILON)
  h_BxNxC = norm.apply({"params": params["norm"]}, x_BxHxWxC).reshape(B, H * W, C)
  dense = lambda name, h: h @ params[name]["kernel"] + params[name]["bias"][None, None, :]
  q, k, v = (dense(n, h_BxNxC) for n in "qkv")
  w_BxNxN = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / math.sqrt(C), axis=-1)
  h_BxNxC = dense("proj_out", jnp.einsum("bqk,bkc->bqc", w_BxNxN, v))
  return x_BxHxWxC + h_BxNxC.reshape(B, H, W, C)


def test_attention_block_matches_einsum_attention():
  block = AttnBlock(num_groups=4)
  x = _images(channels=16)  # 64 positions
  shapes = jax.eval_shape(block.init, jax.random.key(0), x)["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: 0.3 * rng.standard_normal(s.shape, np.float32), shapes)
  assert set(params) == {"norm", "q", "k", "v", "proj_out"}  # the tree checkpoints were saved with
  got = jax.jit(block.apply)({"params": params}, x)
  want = jax.jit(_einsum_attention_block, static_argnums=2)(params, x, 4)
  assert got.dtype == jnp.float32
  # Only float32 rounding differs (jax's einsums take another layout): the measured gap is 3e-7
  # on outputs of size up to 3.6.
  gap = float(jnp.max(jnp.abs(got - want)))
  assert gap <= 1e-6, gap


def test_bfloat16_attention_takes_its_softmax_in_float32():
  block = AttnBlock(num_groups=4, dtype=jnp.bfloat16)
  x = _images(channels=16, size=4)
  params = jax.eval_shape(block.init, jax.random.key(0), x)
  lines = str(jax.make_jaxpr(block.apply)(params, x)).splitlines()
  exps = [line for line in lines if " = exp " in line]
  assert exps and all(":f32[" in line for line in exps), exps  # the softmax is its only exp


def _dtypes_by_layer(model, params, x, t) -> dict[str, set]:
  """The names of the output dtypes of each kind of module called in one application of model."""
  seen = {}

  def record(call, args, kwargs, context):
    out = call(*args, **kwargs)
    if context.method_name == "__call__":
      seen.setdefault(type(context.module).__name__, set()).add(out.dtype.name)
    return out

  with nn.intercept_methods(record):
    model.apply({"params": params}, x, t)
  return seen


@pytest.mark.parametrize("name", ["unet", "mlp"])
def test_bfloat16_network_computes_in_bfloat16_and_returns_float32(name):
  config = _tiny_unet_config() if name == "unet" else toy2d.get_config()
  config.model.dtype = "bfloat16"
  model = create_model(config)
  x = _images() if name == "unet" else np.ones((2, 2), np.float32)
  t = jnp.array([3, 700])
  params = _random_params(model, x, t)
  shapes = jax.eval_shape(lambda: _init(model, x, t))
  assert {p.dtype.name for p in jax.tree.leaves(shapes)} == {"float32"}
  out = model.apply({"params": params}, x, t)
  assert out.dtype == jnp.float32 and out.shape == x.shape
  seen = _dtypes_by_layer(model, params, x, t)
  assert seen["Dense"] == {"bfloat16"}
  if name == "unet":
    # Statistics and normalisation in float32; the blocks cast the result to bfloat16.
    assert seen["Conv"] == {"bfloat16"} and seen["GroupNorm"] == {"float32"}
    assert seen["ResnetBlock"] == seen["AttnBlock"] == {"bfloat16"}


def test_remat_unet_has_the_same_parameters_outputs_and_gradients():
  config = _tiny_unet_config(dropout=0.5)  # dropout on: its masks must not change either
  models = {}
  for remat in (False, True):
    config.model.remat = remat
    models[remat] = create_model(config)
  x, t = _images(), jnp.array([5, 500])
  shapes = [jax.eval_shape(lambda m=m: _init(m, x, t)) for m in models.values()]
  assert jax.tree.map(lambda s: (s.shape, s.dtype), shapes[0]) == jax.tree.map(
    lambda s: (s.shape, s.dtype), shapes[1]
  )
  params = _random_params(models[False], x, t, scale=0.2)

  def loss_and_output(model, params):
    out = model.apply({"params": params}, x, t, train=True, rngs={"dropout": jax.random.key(7)})
    return jnp.mean(out**2), out

  results = [
    jax.jit(jax.value_and_grad(functools.partial(loss_and_output, m), has_aux=True))(params)
    for m in models.values()
  ]
  (_, out), grads = results[0]
  (_, out_remat), grads_remat = results[1]
  # Measured: the outputs are bit-identical, the gradients (up to 0.02) differ by at most 5e-9
  # where XLA orders the recomputed backward pass's sums otherwise.
  np.testing.assert_allclose(out_remat, out, rtol=1e-6, atol=1e-7)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=2e-8), grads_remat, grads
  )


def test_unet_rejects_non_square_input():
  model = UNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), num_groups=4)
  with pytest.raises(ValueError, match="square images, got 8x16"):
    jax.eval_shape(lambda: _init(model, jnp.zeros((1, 8, 16, 3)), jnp.zeros((1,))))


def test_unet_checks_input_size_at_init():
  model = UNet(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), num_groups=4)
  with pytest.raises(ValueError, match="image_size 6 cannot be halved 2 times"):
    jax.eval_shape(lambda: _init(model, jnp.zeros((1, 6, 6, 3)), jnp.zeros((1,))))


# --- MLP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 5])
def test_mlp_output_shape(dim):
  model = create_model(toy2d.get_config())
  x = np.ones((7, dim), np.float32)
  params = _random_params(model, x, jnp.zeros((7,), jnp.int32))
  eps = model.apply({"params": params}, x, jnp.arange(7), train=True)  # dropout 0: no rng needed
  assert eps.shape == (7, dim)


def test_mlp_output_depends_on_t_and_dropout_only_in_training():
  model = MLP(hidden_dim=32, num_layers=2, dropout=0.5)
  x = jnp.ones((2, 2))
  params = _random_params(model, x, jnp.zeros((2,), jnp.int32))
  eps = model.apply({"params": params}, x, jnp.array([0, 50]))
  assert float(jnp.max(jnp.abs(eps[0] - eps[1]))) > 1e-3
  run = lambda seed: model.apply(
    {"params": params}, x, jnp.array([0, 50]), train=True, rngs={"dropout": jax.random.key(seed)}
  )
  assert float(jnp.max(jnp.abs(run(0) - run(1)))) > 1e-3
  np.testing.assert_array_equal(eps, model.apply({"params": params}, x, jnp.array([0, 50])))


def test_mlp_learns_to_denoise():
  """A few hundred DDPM steps on a two-point dataset must beat the trivial predictor eps = 0."""
  model = MLP(hidden_dim=64, num_layers=2)
  x0_data = jnp.array([[-1.0, 1.0], [1.0, -1.0]])
  alpha_bar = jnp.cumprod(1.0 - jnp.linspace(1e-3, 0.2, 50))
  opt = optax.adam(1e-3)

  def loss_fn(params, key):
    k_x, k_t, k_eps = jax.random.split(key, 3)
    x0 = x0_data[jax.random.randint(k_x, (128,), 0, 2)]
    t = jax.random.randint(k_t, (128,), 0, 50)
    eps = jax.random.normal(k_eps, x0.shape)
    a = alpha_bar[t][:, None]
    x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps  # Ho et al. eq. (4)
    return jnp.mean((model.apply({"params": params}, x_t, t) - eps) ** 2)

  def step(carry, key):
    params, state = carry
    updates, state = opt.update(jax.grad(loss_fn)(params, key), state)
    return (optax.apply_updates(params, updates), state), None

  @jax.jit
  def train_and_evaluate(key):
    k_init, k_train, k_eval = jax.random.split(key, 3)
    params = model.init(k_init, x0_data, jnp.zeros((2,), jnp.int32))["params"]
    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(k_train, 400))
    return loss_fn(params, k_eval)

  # eps = 0 scores 1.0; knowing the two points makes eps recoverable from x_t for most t.
  assert float(train_and_evaluate(jax.random.key(0, impl="rbg"))) < 0.5


# --- config validation ----------------------------------------------------------------------


def test_create_model_builds_each_kind():
  assert isinstance(create_model(cifar10.get_config()), UNet)
  assert isinstance(create_model(toy2d.get_config()), MLP)


@pytest.mark.parametrize(
  ("overrides", "message"),
  [
    ({"data.image_size": 30}, r"image_size 30 cannot be halved 3 times .*use a multiple of 8$"),
    ({"model.num_groups": 48}, r"num_groups 48 does not divide channel count 128 .*divisor of 128"),
    (
      # conv_in's output (ch = 12) is normalised too, even when ch_mult never gives 12.
      {"model.ch": 12, "model.ch_mult": (2, 4), "model.num_groups": 24},
      r"num_groups 24 does not divide channel count 12 .*divisor of 12",
    ),
    (
      {"model.attn_resolutions": (16, 5)},
      r"attn_resolutions has 5, .*choose from \[32, 16, 8, 4\]",
    ),
    (
      {"model.name": "transformer"},
      r"unknown model.name 'transformer'; valid: mlp, unet or 'package.module:Class'",
    ),
  ],
)
def test_create_model_rejects_bad_config(overrides, message):
  config = cifar10.get_config()
  for path, value in overrides.items():
    group, field = path.split(".")
    config[group][field] = value
  with pytest.raises(ValueError, match=message):
    create_model(config)


# --- GroupNorm ------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "shape, groups, offset, constant_group",
  [
    ((2, 4, 4, 8), 4, 0.0, False),
    ((3, 8, 8, 16), 8, 3.0, False),
    ((2, 5, 6), 2, -1.0, False),
    ((2, 4, 4, 8), 4, 0.0, True),  # zero variance: GN(x) = bias there
  ],
)
def test_group_norm_matches_flax_values_and_gradients(shape, groups, offset, constant_group):
  """Values and the hand-written gradient (x, scale, bias) against flax's GroupNorm's autodiff."""
  rng = np.random.default_rng(0)
  x = offset + 2.0 * rng.standard_normal(shape).astype(np.float32)
  if constant_group:
    x[0, ..., : shape[-1] // groups] = 0.5  # exact sums: the variance is exactly 0
  params = {
    "scale": rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32),
    "bias": rng.standard_normal(shape[-1]).astype(np.float32),
  }
  ours, theirs = GroupNorm(groups, epsilon=1e-6), nn.GroupNorm(groups, epsilon=1e-6)
  # Same parameter tree, so checkpoints written with flax's GroupNorm load unchanged.
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
    jnp.shape, theirs.init(jax.random.key(0), x)
  )
  weights = rng.standard_normal(shape).astype(np.float32)

  def loss(module):
    return lambda p, x: jnp.sum(jnp.tanh(module.apply({"params": p}, x)) * weights)

  np.testing.assert_allclose(
    ours.apply({"params": params}, x), theirs.apply({"params": params}, x), atol=2e-5
  )
  for got, want in zip(
    jax.grad(loss(ours), argnums=(0, 1))(params, x),
    jax.grad(loss(theirs), argnums=(0, 1))(params, x),
    strict=True,
  ):
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4), got, want)
  # Forward mode too (the probability-flow ODE's divergence takes jvps through the network).
  tangents = (
    jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params),
    weights,
  )
  _, got = jax.jvp(loss(ours), (params, x), tangents)
  _, want = jax.jvp(loss(theirs), (params, x), tangents)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_group_norm_rejects_groups_that_do_not_divide_channels():
  with pytest.raises(ValueError, match="3 groups do not divide 8 channels"):
    GroupNorm(3).init(jax.random.key(0), jnp.zeros((1, 2, 2, 8)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cpu_attention_equals_dot_product_attention(dtype):
  """The CPU's einsum form computes what jax.nn.dot_product_attention does, gradients included."""
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 64, 16)), dtype) for _ in range(3))
  dpa = lambda q, k, v: jax.nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None])[
    :, :, 0
  ]
  ours = jax.jit(single_head_attention)(q, k, v)
  theirs = jax.jit(dpa)(q, k, v)
  assert ours.dtype == theirs.dtype == dtype
  tol = 1e-6 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(theirs, np.float32), atol=tol)
  grads = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32) ** 2), (0, 1, 2)))
  for g_ours, g_theirs in zip(
    grads(single_head_attention)(q, k, v), grads(dpa)(q, k, v), strict=True
  ):
    np.testing.assert_allclose(
      np.asarray(g_ours, np.float32), np.asarray(g_theirs, np.float32), atol=tol * 10
    )


def test_unet_takes_forward_mode_derivatives(tiny_unet):
  """The probability-flow ODE's divergence takes jvps through the network: one against finite
  differences, on the attention level too."""
  model, params = tiny_unet
  params = _perturbed(params)
  x = _images()
  v = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
  f = lambda x: model.apply({"params": params}, x, jnp.array([3, 700]), train=False)
  _, jv = jax.jit(lambda x, v: jax.jvp(f, (x,), (v,)))(x, v)
  h = 1e-2
  fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
  np.testing.assert_allclose(jv, fd, rtol=1e-2, atol=1e-3)
