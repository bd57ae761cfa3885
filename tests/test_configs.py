"""Every shipped config loads, passes the model's checks and builds a network of the right shape."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import models, schedules
from diffusion_jax.evaluation import run_loading

CONFIGS = [
  "cifar10",
  "cifar10_cond",
  "celeba64",
  "church256",
  "digits",
  "digits_cond",
  "toy2d",
  "toy2d_cond",
]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_its_model(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  model = models.create_model(config)
  shape = run_loading.example_shape_for(config)
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  t = jax.ShapeDtypeStruct((2,), jnp.int32)
  variables = jax.eval_shape(lambda x, t: model.init(jax.random.key(0), x, t), x, t)
  out = jax.eval_shape(lambda v, x, t: model.apply(v, x, t), variables, x, t)
  assert out.shape == x.shape
  betas = schedules.get_beta_schedule(
    config.diffusion.schedule,
    config.diffusion.num_timesteps,
    config.diffusion.beta_start,
    config.diffusion.beta_end,
  )
  # The forward process must reach (close to) N(0, I), or sampling from N(0, I) is mismatched.
  assert np.prod(1 - betas) < 0.01
