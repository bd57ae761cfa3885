"""The KL autoencoder: its layout and shapes, the posterior's maths against NumPy, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import latents
from diffusion_jax.models import AutoencoderKL

# Two levels (f = 2), 4 and 8 channels, a 2-channel latent: compiles in about a second.
TINY = dict(ch=4, ch_mult=(1, 2), num_res_blocks=1, num_groups=2, latent_channels=2)


def _images(size: int = 8, channels: int = 3):
  return np.random.default_rng(0).uniform(-1, 1, (2, size, size, channels)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
  """(vae, params, jitted encode, jitted decode) for the tiny autoencoder."""
  vae = AutoencoderKL(**TINY)
  # N(0, 0.3^2) parameters of the init's shapes, drawn with NumPy: no init to compile, and no
  # near-zero layers (the ResNet blocks' last convs start near zero).
  shapes = jax.eval_shape(vae.init, jax.random.key(0), _images())["params"]
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda s: 0.3 * rng.standard_normal(s.shape).astype(np.float32), shapes)
  encode = jax.jit(lambda p, x: vae.apply({"params": p}, x, method="encode"))
  decode = jax.jit(lambda p, z: vae.apply({"params": p}, z, method="decode"))
  return vae, params, encode, decode


def test_layout_and_shapes(tiny):
  vae, params, encode, decode = tiny
  assert vae.factor == 2
  assert set(params) == {"encoder", "quant_conv", "post_quant_conv", "decoder"}
  assert set(params["encoder"]) == {
    *("conv_in", "down0_res0", "down0_downsample", "down1_res0"),
    *("mid_res0", "mid_attn", "mid_res1", "norm_out", "conv_out"),
  }
  assert set(params["decoder"]) == {
    *("conv_in", "mid_res0", "mid_attn", "mid_res1", "up1_res0", "up1_res1", "up1_upsample"),
    *("up0_res0", "up0_res1", "norm_out", "conv_out"),
  }
  # No timestep: the ResNet blocks have no embedding projection.
  block = params["encoder"]["down1_res0"]
  assert set(block) == {"norm1", "conv1", "norm2", "conv2", "nin_shortcut"}
  assert params["quant_conv"]["kernel"].shape == (1, 1, 4, 4)
  assert params["post_quant_conv"]["kernel"].shape == (1, 1, 2, 2)
  x = _images()
  mean, logvar = encode(params, x)
  assert mean.shape == logvar.shape == (2, 4, 4, 2) and mean.dtype == jnp.float32
  x_rec = decode(params, mean)
  assert x_rec.shape == x.shape and x_rec.dtype == jnp.float32
  reconstruct = jax.jit(lambda p, x: vae.apply({"params": p}, x))
  np.testing.assert_allclose(reconstruct(params, x), x_rec, atol=1e-5)


def test_without_mid_attention():
  vae = AutoencoderKL(**TINY, mid_attention=False)
  shapes = jax.eval_shape(vae.init, jax.random.key(0), _images())["params"]
  assert "mid_attn" not in shapes["encoder"] and "mid_attn" not in shapes["decoder"]


def test_log_variance_is_clipped(tiny):
  _, params, encode, _ = tiny
  for bias, clipped in ((1e3, latents.LOGVAR_MAX), (-1e3, latents.LOGVAR_MIN)):
    # quant_conv's output channels are the mean's two, then the log-variance's two.
    moved = dict(params)
    moved["quant_conv"] = {**params["quant_conv"], "bias": jnp.array([0.0, 0.0, bias, bias])}
    _, logvar = encode(moved, _images())
    np.testing.assert_array_equal(logvar, clipped)


def test_bfloat16_compute_stays_close(tiny):
  vae, params, encode, _ = tiny
  bf16 = AutoencoderKL(**TINY, dtype="bfloat16")
  mean, _ = jax.jit(lambda p, x: bf16.apply({"params": p}, x, method="encode"))(params, _images())
  assert mean.dtype == jnp.float32
  np.testing.assert_allclose(mean, encode(params, _images())[0], atol=0.1)


def test_posterior_maths_against_numpy():
  rng = np.random.default_rng(1)
  mean, logvar, eps = (rng.standard_normal((3, 2, 2, 4)) for _ in range(3))
  kl = latents.kl_to_standard_normal(jnp.asarray(mean, jnp.float32), jnp.asarray(logvar))
  # KL(N(m, s^2) || N(0, 1)) = log(1 / s) + (s^2 + m^2) / 2 - 1/2 per dimension.
  s2 = np.exp(logvar)
  want = np.sum(-0.5 * logvar + (s2 + mean**2) / 2 - 0.5, axis=(1, 2, 3))
  np.testing.assert_allclose(kl, want, rtol=1e-5)
  assert kl.shape == (3,) and kl.dtype == jnp.float32
  z = latents.sample(jnp.asarray(mean), jnp.asarray(logvar), jnp.asarray(eps))
  np.testing.assert_allclose(z, mean + np.sqrt(s2) * eps, rtol=1e-5, atol=1e-6)
  zero = jnp.zeros((1, 2, 2, 4))
  np.testing.assert_array_equal(latents.kl_to_standard_normal(zero, zero), [0.0])


def test_bad_images_are_refused(tiny):
  vae, params, _, _ = tiny
  with pytest.raises(ValueError, match="3-channel images, got 1"):
    vae.apply({"params": params}, _images(channels=1), method="encode")
  with pytest.raises(ValueError, match="image_size 7 cannot be halved 1 times"):
    vae.apply({"params": params}, _images(size=7), method="encode")
  with pytest.raises(ValueError, match="num_groups 3 does not divide"):
    AutoencoderKL(**{**TINY, "num_groups": 3}).init(jax.random.key(0), _images())


@pytest.mark.parametrize("reconstruction", ["l1", "l2"])
def test_objective_against_numpy(reconstruction):
  rng = np.random.default_rng(2)
  x, x_rec = (rng.uniform(-1, 1, (3, 4, 4, 1)) for _ in range(2))
  mean, logvar = (rng.standard_normal((3, 2, 2, 2)) for _ in range(2))
  loss, rec, kl = latents.autoencoder_loss(
    *map(jnp.asarray, (x, x_rec, mean, logvar)), reconstruction=reconstruction, kl_weight=0.5
  )
  diff = np.abs(x - x_rec) if reconstruction == "l1" else (x - x_rec) ** 2
  np.testing.assert_allclose(rec, diff.sum(axis=(1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(kl, latents.kl_to_standard_normal(mean, logvar), rtol=1e-6)
  np.testing.assert_allclose(loss, rec + 0.5 * kl, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown reconstruction loss 'l3'"):
    latents.autoencoder_loss(x, x_rec, mean, logvar, reconstruction="l3", kl_weight=0.5)
