"""config_checks: every config field of the wrong type or range is one error naming the field."""

import importlib

import ml_collections
import pytest

from diffusion_jax.training import config_checks, run_config
from tests.test_configs import CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_pass(name):
  config_checks.check_config(importlib.import_module(f"configs.{name}").get_config())


def test_every_field_has_a_check():
  config = importlib.import_module("configs.default").get_config()
  fields = set(run_config.flatten(config.to_dict()))
  assert fields == set(config_checks.FIELD_CHECKS)


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("model.ch_mult", "abc", "model.ch_mult must be a tuple of positive integers"),
    ("model.ch_mult", (1, 0), "model.ch_mult must be a tuple of positive integers"),
    ("model.ch_mult", (), "model.ch_mult must not be empty"),
    ("data.image_size", -8, "data.image_size must be at least 1; got -8"),
    ("data.image_size", 0, "data.image_size must be at least 1; got 0"),
    ("data.image_size", 8.5, "data.image_size must be an integer"),
    ("data.num_channels", 2, "data.num_channels must be one of 1, 3"),
    ("training.batch_size", True, "training.batch_size must be an integer"),
    ("model.dropout", 1.0, "model.dropout must lie in [0, 1)"),
    ("optim.learning_rate", float("nan"), "optim.learning_rate must be a finite number"),
    ("diffusion.beta_end", 0.0, "diffusion.beta_end must lie in (0, 1)"),
    ("sampling.sampler", "euler", "sampling.sampler must be one of 'ancestral'"),
    ("data.random_flip", 1, "data.random_flip must be True or False"),
    ("model.dtype", "float16", "model.dtype must be one of 'float32', 'bfloat16'"),
    ("training.grad_accum_steps", 0, "training.grad_accum_steps must be at least 1; got 0"),
    ("training.steps_per_call", 2.0, "training.steps_per_call must be an integer"),
  ],
)
def test_bad_values_name_the_field(field, value, message):
  # Built from a dict, as from a config.json: ml_collections' own type checks do not apply.
  values = importlib.import_module("configs.digits").get_config().to_dict()
  group, name = field.split(".")
  values[group][name] = value
  config = ml_collections.ConfigDict(values)
  with pytest.raises(ValueError) as info:
    config_checks.check_config(config)
  assert message in str(info.value) and "\n" not in str(info.value)


def test_unknown_and_missing_fields_are_errors():
  config = importlib.import_module("configs.toy2d").get_config()
  with config.unlocked():
    config.training.num_train_step = 300  # a typo made from Python
  with pytest.raises(ValueError, match="config field training.num_train_step does not exist"):
    config_checks.check_config(config)
  config = ml_collections.ConfigDict(
    importlib.import_module("configs.toy2d").get_config().to_dict()
  )
  del config.eval["steps"]
  with pytest.raises(ValueError, match="config field eval.steps is missing"):
    config_checks.check_config(config)


@pytest.mark.parametrize(
  "field, value, what",
  [
    ("training.log_every", 15, "a multiple"),
    ("training.checkpoint_every", 5, "a multiple"),
    ("training.sample_every", 25, "0 or a multiple"),
    ("eval.every_steps", 1, "0 or a multiple"),
  ],
)
def test_periods_must_be_whole_calls_of_steps_per_call(field, value, what):
  config = importlib.import_module("configs.toy2d").get_config()
  config.training.steps_per_call = 10
  config_checks.check_config(config)  # its periods are all multiples of 10 (eval is off)
  group, name = field.split(".")
  config[group][name] = value
  with pytest.raises(ValueError) as info:
    config_checks.check_config(config)
  assert str(info.value) == (
    f"config field {field} must be {what} of training.steps_per_call 10; got {value}"
  )
