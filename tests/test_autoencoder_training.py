"""Training the KL autoencoder: exact resume, the run's previews, metrics and checkpoint, and
errors, from train.py too."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import models
from diffusion_jax.configs import digits_autoencoder
from diffusion_jax.training import autoencoder_loop, autoencoder_run
from tests.scripts import assert_fails_cleanly, run_script


def _tiny(num_train_steps: int):
  """configs/digits_autoencoder.py at 8x8 with one level of 4 channels and no attention (the
  backward pass of every block adds about a second of compile time), batches of 8."""
  config = digits_autoencoder.get_config()
  config.data.image_size = 8
  config.model.update(ch=4, ch_mult=(1,), num_groups=2, latent_channels=2, mid_attention=False)
  config.training.update(
    batch_size=8,
    num_train_steps=num_train_steps,
    log_every=3,
    checkpoint_every=3,
    sample_every=3,
    num_sample_images=8,
  )
  config.optim.warmup_steps = 2
  return config


def test_resume_is_exact_and_the_run_opens(tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  state = autoencoder_loop.train_autoencoder(_tiny(6), straight)
  assert int(state.step) == 6
  # The same run stopped after step 3: its checkpoints and metrics up to there.
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))
  again = autoencoder_loop.train_autoencoder(_tiny(6), resumed)
  same = jax.tree.map(np.array_equal, jax.device_get(again.params), jax.device_get(state.params))
  assert all(jax.tree.leaves(same))

  assert sorted(os.listdir(os.path.join(straight, "previews"))) == [
    "step_0000003.png",
    "step_0000006.png",
  ]
  with open(os.path.join(straight, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  scalars = [r for r in logged if "loss" in r]
  assert [r["step"] for r in scalars] == [3, 6]
  assert all(np.isfinite(r[k]) for r in scalars for k in ("loss", "reconstruction", "kl"))
  vae, params, config = autoencoder_run.load_autoencoder(straight)
  assert vae.factor == 1 and config.model.name == "autoencoder_kl"
  same = jax.tree.map(np.array_equal, jax.device_get(params), jax.device_get(state.ema_params))
  assert all(jax.tree.leaves(same))


def test_configs_it_cannot_train_are_refused(tmp_path):
  config = _tiny(2)
  config.training.grad_accum_steps = 2
  with pytest.raises(ValueError, match="set training.grad_accum_steps=1"):
    autoencoder_loop.train_autoencoder(config, str(tmp_path))
  config = _tiny(2)
  config.model.ch_mult = (1, 2)
  config.data.image_size = 7
  with pytest.raises(ValueError, match="image_size 7 is not a multiple of .* factor 2"):
    autoencoder_loop.train_autoencoder(config, str(tmp_path))
  with pytest.raises(ValueError, match="model.name 'unet' is not an autoencoder"):
    config = _tiny(2)
    config.model.name = "unet"
    autoencoder_loop.train_autoencoder(config, str(tmp_path))
  args = ["--config=configs/digits_autoencoder.py", f"--workdir={tmp_path}"]
  proc = run_script("train.py", *args, "--config.training.grad_accum_steps=2")
  assert_fails_cleanly(proc, "set training.grad_accum_steps=1")


def test_the_shipped_config_builds_its_autoencoder():
  config = digits_autoencoder.get_config()
  vae = models.create_autoencoder(config)
  x = jax.ShapeDtypeStruct((2, 16, 16, 1), jnp.float32)
  params = jax.eval_shape(vae.init, jax.random.key(0), x)["params"]
  mean, _ = jax.eval_shape(lambda p, x: vae.apply({"params": p}, x, method="encode"), params, x)
  assert vae.factor == 4 and mean.shape == (2, 4, 4, 3)
