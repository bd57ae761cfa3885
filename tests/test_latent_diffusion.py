"""Latent diffusion: training on a frozen autoencoder's scaled latents, exact resume, the scale
against NumPy and where it comes from, sample.py decoding to images, and the errors."""

import importlib
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import data, models, samplers
from diffusion_jax.cli import sample_outputs
from diffusion_jax.evaluation import run_loading
from diffusion_jax.training import config_checks, latent_space, run_config
from diffusion_jax.training import loop as train_loop
from tests import tiny_configs


def test_latent_run_resumes_exactly_and_samples_decoded_images(tmp_path, autoencoder_dir):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  state = train_loop.train_and_evaluate(tiny_configs.digits_latent(autoencoder_dir), straight)
  # The U-Net sees 2-channel latents.
  assert state.params["conv_in"]["kernel"].shape[2] == 2
  scale = run_config.load_config(straight).data.latent_scale
  assert scale > 0
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "2"))
  again = train_loop.train_and_evaluate(tiny_configs.digits_latent(autoencoder_dir), resumed)
  same = jax.tree.map(np.array_equal, jax.device_get(again.params), jax.device_get(state.params))
  assert all(jax.tree.leaves(same))
  assert run_config.load_config(resumed).data.latent_scale == scale

  # What sample.py does with the run: samples.npz holds decoded 8x8 images.
  run = run_loading.load_run(straight)
  assert run.example_shape == (4, 4, 2)
  spec = samplers.spec_from_config(run.config.sampling)
  paths, _ = sample_outputs.sample_and_save(run, str(tmp_path / "out"), 8, 8, 0, spec, gif=False)
  with np.load(paths[0]) as f:
    samples = f["arr_0"]
  assert samples.shape == (8, 8, 8, 1) and samples.dtype == np.uint8


def test_scale_is_one_over_the_numpy_std_of_posterior_means(autoencoder_dir):
  config = tiny_configs.digits_latent(autoencoder_dir)
  vae, params, released = latent_space.frozen_autoencoder(config)
  assert released == 0.0
  ds = data.create_dataset(config.data, 8, 0)
  batches = [ds.get_batch(b) for b in range(3)]
  means = [np.asarray(latent_space.posterior_mean(vae, params, x)) for x in batches]
  expected = 1.0 / np.std(np.concatenate(means).astype(np.float64))
  np.testing.assert_allclose(latent_space.data_scale(vae, params, batches), expected, rtol=1e-5)


def test_the_scale_given_recorded_or_released_comes_before_computing(tmp_path, autoencoder_dir):
  config = tiny_configs.digits_latent(autoencoder_dir)
  never = lambda: pytest.fail("computed a scale it was given")
  assert latent_space.run_scale(config, str(tmp_path), 0.25, never) == 0.25
  config.data.latent_scale = 0.5
  assert latent_space.run_scale(config, str(tmp_path), 0.25, never) == 0.5
  run_config.save_config(str(tmp_path), config)
  config.data.latent_scale = 0.0
  assert latent_space.run_scale(config, str(tmp_path), 0.25, never) == 0.5
  assert latent_space.run_scale(config, str(tmp_path / "new"), 0.0, lambda: 2.0) == 2.0


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("num_channels", 3, "data.num_channels 3 does not match the autoencoder's 1 image channels"),
    ("image_size", 9, "data.image_size 9 is not a multiple of the autoencoder's downsampling"),
  ],
)
def test_images_the_autoencoder_does_not_take_are_refused(
  tmp_path, autoencoder_dir, field, value, message
):
  config = tiny_configs.digits_latent(autoencoder_dir)
  config.data[field] = value
  with pytest.raises(ValueError, match=message):
    train_loop.train_and_evaluate(config, str(tmp_path))


def test_a_missing_autoencoder_run_is_refused(tmp_path):
  config = tiny_configs.digits_latent(str(tmp_path / "nothing"))
  with pytest.raises(ValueError, match="holds no autoencoder run \\(no config.json\\)"):
    train_loop.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.parametrize(
  "autoencoder, latent",
  [("digits_autoencoder", "digits_latent"), ("celeba64_autoencoder", "celeba64_latent")],
)
def test_latent_configs_build_their_unet_on_their_autoencoders_latents(autoencoder, latent):
  ae_config = importlib.import_module(f"configs.{autoencoder}").get_config()
  vae = models.create_autoencoder(ae_config)
  size = ae_config.data.image_size // vae.factor
  config = importlib.import_module(f"configs.{latent}").get_config()
  assert config.data.image_size == ae_config.data.image_size
  assert config.data.autoencoder_run == f"runs/{autoencoder}"
  config_checks.check_config(ae_config)
  config_checks.check_config(config)
  model = models.create_model(config)
  x = jax.ShapeDtypeStruct((2, size, size, vae.latent_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((2,), jnp.int32)
  variables = jax.eval_shape(lambda x, t: model.init(jax.random.key(0), x, t), x, t)
  assert jax.eval_shape(lambda v, x, t: model.apply(v, x, t), variables, x, t).shape == x.shape
