"""Latent diffusion: training on a frozen autoencoder's scaled latents, exact resume, the scale
against NumPy and where it comes from, sample.py decoding to images, and the errors."""

import dataclasses
import importlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import data, models, samplers
from diffusion_jax.cli import sample_outputs
from diffusion_jax.evaluation import run_loading
from diffusion_jax.pretrained import diffusers_autoencoder
from diffusion_jax.training import (
  config_checks,
  imported_run,
  latent_cache,
  latent_space,
  run_config,
)
from diffusion_jax.training import loop as train_loop
from tests import tiny_configs


def test_latent_run_resumes_exactly_trains_alike_on_a_cache_and_samples_images(
  tmp_path, autoencoder_dir
):
  # Flipped digits: the mirror images' latents, encoded in the step or read from the cache.
  config = tiny_configs.digits_latent(autoencoder_dir)
  config.data.random_flip = True
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  state = train_loop.train_and_evaluate(config, straight)
  # The U-Net sees 2-channel latents.
  assert state.params["conv_in"]["kernel"].shape[2] == 2
  scale = run_config.load_config(straight).data.latent_scale
  assert scale > 0
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "2"))
  again = train_loop.train_and_evaluate(config, resumed)
  same = jax.tree.map(np.array_equal, jax.device_get(again.params), jax.device_get(state.params))
  assert all(jax.tree.leaves(same))
  assert run_config.load_config(resumed).data.latent_scale == scale

  # A run on cached latents: the same batches, encoded by another program, so equal to rounding.
  config.data.latent_cache = str(tmp_path / "cache")
  caching = train_loop.train_and_evaluate(config, str(tmp_path / "caching"))
  assert os.path.isfile(tmp_path / "cache" / "latents_00000.npy")
  close = lambda a, b: np.allclose(a, b, rtol=1e-4, atol=1e-5)
  same = jax.tree.map(close, jax.device_get(caching.params), jax.device_get(state.params))
  assert all(jax.tree.leaves(same))
  losses = [
    [
      json.loads(line)["loss"]
      for line in open(os.path.join(run, "metrics.jsonl"))
      if "loss" in line
    ]
    for run in (straight, str(tmp_path / "caching"))
  ]
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)

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
  [
    ("digits_autoencoder", "digits_latent"),
    ("celeba64_autoencoder", "celeba64_latent"),
    ("cifar10_autoencoder", "cifar10_latent"),
  ],
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


def _cache_config(autoencoder_dir: str, cache: str):
  config = tiny_configs.digits_latent(autoencoder_dir)
  config.data.update(latent_cache=cache, random_flip=True)
  return config


def _unscaled(config) -> latent_space.LatentSpace:
  vae, params, _ = latent_space.frozen_autoencoder(config)
  return latent_space.LatentSpace(vae, params, 1.0)


def test_the_cache_holds_each_images_posterior_mean_and_its_mirrors(tmp_path, autoencoder_dir):
  config = _cache_config(autoencoder_dir, str(tmp_path / "cache"))
  space = _unscaled(config)
  manifest = latent_cache.build(config, space, batch_size=64, shard_size=512)
  assert manifest["num_examples"] == 1797 and manifest["mirrored"]
  files = sorted(os.listdir(tmp_path / "cache"))
  assert files == ["cache.json"] + [f"latents_{k:05d}.npy" for k in range(4)]
  x = data.create_examples(config.data, 0).load(np.arange(1024, 1536))
  stored = np.load(tmp_path / "cache" / "latents_00002.npy")
  assert stored.shape == (512, 2, 4, 4, 2)
  # Encoded here in one batch of 512, there in batches of 64.
  own = lambda images: np.asarray(latent_space.posterior_mean(space.vae, space.params, images))
  np.testing.assert_allclose(stored[:, 0], own(x), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stored[:, 1], own(x[:, :, ::-1]), rtol=1e-5, atol=1e-5)


def test_an_interrupted_cache_keeps_whole_shards_and_resumes_at_the_missing(
  tmp_path, autoencoder_dir, monkeypatch
):
  folder = tmp_path / "cache"
  config = _cache_config(autoencoder_dir, str(folder))
  space = _unscaled(config)
  real, calls = latent_space.posterior_mean, []

  def stopped_at_the_20th_batch(vae, params, x):
    calls.append(len(x))
    if len(calls) == 20 and not os.path.exists(folder / "latents_00001.npy"):
      raise KeyboardInterrupt
    return real(vae, params, x)

  monkeypatch.setattr(latent_space, "posterior_mean", stopped_at_the_20th_batch)
  with pytest.raises(KeyboardInterrupt):
    latent_cache.build(config, space, batch_size=64, shard_size=512)
  # 16 batches (8 of images, 8 of mirrors) per shard: shard 0 whole, shard 1 never written.
  assert sorted(os.listdir(folder)) == ["cache.json", "latents_00000.npy"]
  first = np.load(folder / "latents_00000.npy")
  calls.clear()
  latent_cache.build(config, space, batch_size=64, shard_size=512)
  assert len(calls) == 2 * (8 + 8 + 5)  # shards 1, 2 and 3 (261 examples) only
  np.testing.assert_array_equal(np.load(folder / "latents_00000.npy"), first)
  assert len(os.listdir(folder)) == 5


def test_a_cache_of_other_latents_is_refused(tmp_path, autoencoder_dir):
  config = _cache_config(autoencoder_dir, str(tmp_path / "cache"))
  space = _unscaled(config)
  latent_cache.build(config, space, batch_size=64, shard_size=1024)
  retrained = dataclasses.replace(space, params=jax.tree.map(lambda p: 2 * p, space.params))
  with pytest.raises(ValueError, match=r"other data or another autoencoder \(autoencoder_sha256"):
    latent_cache.build(config, retrained, batch_size=64, shard_size=1024)
  config.data.random_flip = False
  with pytest.raises(ValueError, match=r"\(mirrored differ\); give another folder or delete"):
    latent_cache.build(config, space, batch_size=64, shard_size=1024)


def test_cached_batches_are_the_training_steps_encoded_batches(tmp_path, autoencoder_dir):
  config = _cache_config(autoencoder_dir, str(tmp_path / "cache"))
  vae, params, _ = latent_space.frozen_autoencoder(config)
  space = latent_space.LatentSpace(vae, params, 0.7)
  images = data.create_dataset(config.data, 8, config.seed)
  cached = latent_cache.cached_dataset(config, space, 8)
  flip_B = jnp.asarray([True, False] * 4)
  for step in (0, 1, 300):  # 300: a later epoch, in another shard
    np.testing.assert_allclose(
      latent_cache.scaled_latents(0.7, cached.get_batch(step), flip_B),
      space.latents_of_images(params, images.get_batch(step), flip_B),
      rtol=1e-5,
      atol=1e-5,
    )


def test_a_latent_cache_without_an_autoencoder_is_refused():
  config = tiny_configs.digits_small()
  config.data.latent_cache = "cache"
  with pytest.raises(ValueError, match="data.latent_cache caches latents; it needs data.autoenc"):
    config_checks.check_config(config)


def test_a_latent_run_on_a_converted_vae_uses_its_released_scale(tmp_path):
  """The diffusers fixture (RGB, f = 4, scaling_factor 0.18215) as the autoencoder run of latent
  diffusion on 16x16 RGB images from an .npz: the run takes the released scale, and its cache holds
  the fixture's posterior means."""
  fixture = os.path.join(os.path.dirname(__file__), "fixtures", "diffusers_vae_tiny", "model")
  vae_config, params = diffusers_autoencoder.load_diffusers_autoencoder(fixture)
  imported_run.write_run(str(tmp_path / "vae"), vae_config, params, writer="test")
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "images.npz", images=rng.integers(0, 256, (24, 16, 16, 3), np.uint8))
  config = tiny_configs.digits_latent(str(tmp_path / "vae"))
  config.data.update(
    source="npz",
    path=str(tmp_path / "images.npz"),
    image_size=16,
    num_channels=3,
    latent_cache=str(tmp_path / "cache"),
  )
  space, recorded = latent_space.open_for_training(config, str(tmp_path / "run"), None)
  assert space.scale == recorded.data.latent_scale == 0.18215
  assert space.latent_shape((16, 16, 3)) == (4, 4, 2)  # the VAE's f and latent channels
  cached = latent_cache.cached_dataset(recorded, space, 8)
  x = data.create_examples(config.data, 0).load(np.arange(24))
  means = latent_space.posterior_mean(space.vae, space.params, x)
  np.testing.assert_allclose(cached.examples_at(list(range(24))), means, rtol=1e-5, atol=1e-5)


def test_a_resumed_run_that_may_not_continue_stops_before_encoding(tmp_path, autoencoder_dir):
  config = tiny_configs.digits_latent(autoencoder_dir)
  recorded = config.copy_and_resolve_references()
  recorded.model.ch = 16
  recorded.data.latent_scale = 0.5  # as a started run records it
  run_config.save_config(str(tmp_path / "run"), recorded)
  config.data.latent_cache = str(tmp_path / "cache")
  with pytest.raises(ValueError, match=r"holds a different config \(changed: model\.ch\)"):
    train_loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "cache")
