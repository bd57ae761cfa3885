"""Class-conditional training: the step takes labels, label dropout swaps in the null class, runs
record their classes, resume exactly, and refuse data with more classes than the model."""

import json
import os

import jax
import numpy as np
import pytest

from diffusion_jax import data, models, schedules, sharding
from diffusion_jax.training import loop as train_loop
from diffusion_jax.training import run_config
from diffusion_jax.training import state as train_state
from diffusion_jax.training.step import make_train_step
from tests import tiny_configs


def _conditional_toy(num_train_steps: int = 20):
  """toy2d on the 8-Gaussian mixture with the component as label."""
  config = tiny_configs.toy(num_train_steps)
  config.data.name = "gaussian_mixture"
  config.model.num_classes = 8
  config.training.sample_every = num_train_steps
  config.training.num_sample_images = 16
  config.sampling.batch_size = 16
  config.sampling.guidance = 1.0
  return config


def _step_with(config, label_dropout, labels_of):
  """One step from the same state and batch, with the labels labels_of(true labels) and the
  given label dropout; returns the new params."""
  config.training.label_dropout = label_dropout
  config.optim.warmup_steps = 0  # else the first step does not move the parameters
  mesh = sharding.data_mesh()
  model = models.create_model(config)
  ds = data.create_dataset(config.data, config.training.batch_size, config.seed, labeled=True)
  state = jax.jit(
    lambda k: train_state.create_train_state(config, model, ds.example_shape, k),
    out_shardings=sharding.replicated(mesh),
  )(jax.random.key(0))
  x0, y = ds.get_labeled_batch(0)
  step = make_train_step(config, model, schedules.schedule_from_config(config.diffusion), mesh)
  x0, y = sharding.shard_batch(x0, mesh), sharding.shard_batch(labels_of(y), mesh)
  state, metrics = step(state, x0, jax.random.key(1), y)
  assert np.isfinite(float(metrics["loss"]))
  return jax.device_get(state.params)


def test_label_dropout_one_trains_the_null_class_and_zero_the_labels():
  config = _conditional_toy()
  null = lambda y: np.full_like(y, 8)
  all_dropped = _step_with(config, 1.0, lambda y: y)
  jax.tree.map(np.testing.assert_array_equal, all_dropped, _step_with(config, 0.0, null))
  kept = _step_with(config, 0.0, lambda y: y)
  emb = kept["label_emb"]["embedding"] - all_dropped["label_emb"]["embedding"]
  assert np.abs(emb[:8]).max() > 0  # the true classes' rows moved, not only the null's
  some = _step_with(config, 0.5, lambda y: y)
  assert not np.array_equal(some["label_emb"]["embedding"], kept["label_emb"]["embedding"])


def test_conditional_run_records_classes_and_resumes_exactly(tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  final = train_loop.train_and_evaluate(_conditional_toy(20), straight)
  train_loop.train_and_evaluate(_conditional_toy(10), resumed)
  again = train_loop.train_and_evaluate(_conditional_toy(20), resumed)
  jax.tree.map(
    np.testing.assert_array_equal, jax.device_get(final.params), jax.device_get(again.params)
  )
  assert run_config.load_class_names(straight) == tuple(f"mode{k}" for k in range(8))
  with open(os.path.join(straight, "classes.json")) as f:
    assert json.load(f)[0] == "mode0"
  assert os.path.exists(os.path.join(straight, "previews", "step_0000020.png"))
  assert run_config.load_class_names(str(tmp_path)) == ()


def test_too_few_model_classes_and_unlabeled_data_are_refused(tmp_path):
  config = _conditional_toy()
  config.model.num_classes = 4
  with pytest.raises(ValueError, match="data has 8 classes but model.num_classes is 4"):
    train_loop.train_and_evaluate(config, str(tmp_path / "a"))
  config.model.num_classes = 2
  config.data.name = "swiss_roll"
  with pytest.raises(ValueError, match="'swiss_roll' has no class labels"):
    train_loop.train_and_evaluate(config, str(tmp_path / "b"))


def test_quick_evaluation_of_a_conditional_run_logs_accuracy(tmp_path):
  config = tiny_configs.digits_small(num_train_steps=2)
  config.model.num_classes = 10
  config.eval.every_steps = 2
  config.eval.num_samples = 20
  config.eval.steps = 3
  config.eval.metrics = "fid"
  train_loop.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    logged = [r for r in map(json.loads, f) if "eval/fid" in r]
  assert len(logged) == 1 and 0.0 <= logged[0]["eval/accuracy"] <= 1.0
