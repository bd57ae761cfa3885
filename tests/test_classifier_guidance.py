"""The noisy-image classifier: its shape, a training step that learns, and train_classifier.py then
sample.py --classifier on a tiny unconditional digits run."""

import functools
import os

import jax
import numpy as np
import pytest

from diffusion_jax import data, models, schedules, sharding
from diffusion_jax.training import classifier_loop
from diffusion_jax.training import state as train_state
from tests import tiny_configs
from tests.scripts import assert_fails_cleanly, run_script
from tests.test_cli import DIGITS_FLAGS

CLASSIFIER_FLAGS = ["--config=configs/digits_classifier.py", *DIGITS_FLAGS[1:]]
CLASSIFIER_FLAGS = [f for f in CLASSIFIER_FLAGS if "attn_resolutions" not in f]


def test_classifier_step_learns_the_digits_at_low_noise():
  config = tiny_configs.digits_small()
  config.model.num_classes = 10
  config.model.attn_resolutions = ()
  config.training.batch_size = 32
  config.optim.warmup_steps = 0
  config.optim.learning_rate = 3e-3
  model = models.create_classifier(config)
  sched = schedules.schedule_from_config(config.diffusion)
  mesh = sharding.data_mesh()
  ds = data.create_dataset(config.data, 32, 0, labeled=True)
  state = train_state.create_train_state(config, model, ds.example_shape, jax.random.key(0))
  step = jax.jit(
    functools.partial(classifier_loop.classifier_step, model=model, sched=sched, ema_decay=0.9)
  )
  losses = []
  for i in range(30):
    x, y = (sharding.shard_batch(a, mesh) for a in ds.get_labeled_batch(i))
    state, metrics = step(state, x, y, jax.random.key(1))
    losses.append(float(metrics["loss"]))
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
  logits = models.apply(model, state.params, x, np.zeros(32, np.int32), train=False)
  assert logits.shape == (32, 10)
  log_prob = models.classifier_log_prob(model, state.params)(x, np.zeros(32, np.int32), y)
  np.testing.assert_allclose(log_prob, jax.nn.log_softmax(logits)[np.arange(32), y], rtol=1e-5)


def test_classifier_needs_classes_and_images():
  config = tiny_configs.digits_small()
  with pytest.raises(ValueError, match="needs model.num_classes > 0"):
    models.create_classifier(config)
  toy = tiny_configs.toy()
  toy.model.num_classes = 2
  with pytest.raises(ValueError, match="takes images"):
    models.create_classifier(toy)


def test_train_classifier_then_guide_an_unconditional_run(tiny_digits_run, tmp_path):
  classifier, run = str(tmp_path / "classifier"), tiny_digits_run
  run_script("train_classifier.py", *CLASSIFIER_FLAGS, f"--workdir={classifier}", check=True)
  assert sorted(os.listdir(os.path.join(classifier, "checkpoints"))) == ["2", "4"]
  out = str(tmp_path / "out")
  args = [f"--workdir={run}", "--batch_size=8", "--sampler=ddim", "--steps=4"]
  guide = [f"--classifier={classifier}", "--classifier_scale=3"]
  run_script("sample.py", *args, *guide, "--labels=1,7,7", f"--out={out}", check=True)
  saved = np.load(os.path.join(out, "samples.npz"))
  assert saved["arr_0"].shape == (3, 8, 8, 1)
  np.testing.assert_array_equal(saved["labels"], [1, 7, 7])
  plain = run_script("sample.py", *args, "--labels=1", f"--out={tmp_path / 'y'}")
  assert_fails_cleanly(plain, "unconditional (model.num_classes=0); it takes no labels")
