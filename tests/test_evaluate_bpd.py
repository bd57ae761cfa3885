"""evaluate_bpd.py end to end on a toy run trained in-process and a digits U-Net, and bad input."""

import json
import math
import os

import jax
import numpy as np
import pytest

from diffusion_jax import models
from diffusion_jax.evaluation import run_loading
from diffusion_jax.training import checkpoints, run_config
from diffusion_jax.training import loop as train_loop
from diffusion_jax.training import state as train_state
from tests import tiny_configs
from tests.scripts import assert_fails_cleanly, run_script


def evaluate(workdir, *flags):
  return run_script("evaluate_bpd.py", f"--workdir={workdir}", *flags)


def check_result(path, num_timesteps, num_examples, decoder):
  with open(path) as f:
    result = json.load(f)
  assert result["method"] == "vlb" and result["decoder"] == decoder
  assert result["num_examples"] == num_examples
  assert result["num_network_evals"] == num_timesteps * num_examples
  assert len(result["terms_bpd"]) == num_timesteps
  assert math.isfinite(result["total_bpd"]) and result["total_bpd"] > 0
  assert result["total_bpd"] == pytest.approx(result["prior_bpd"] + sum(result["terms_bpd"]))
  return result


@pytest.fixture(scope="module")
def toy_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("toy"))
  config = tiny_configs.toy(num_train_steps=10)
  config.training.sample_every = 0
  train_loop.train_and_evaluate(config, workdir)
  return workdir


def test_toy_run_gets_a_density_bound_and_is_not_overwritten(toy_workdir):
  # 40 examples in batches of 16: the last batch is padded and its padding dropped.
  proc = evaluate(toy_workdir, "--num_examples=40", "--batch_size=16")
  assert proc.returncode == 0, proc.stderr[-3000:]
  path = os.path.join(toy_workdir, "eval", "bpd_step_0000010.json")
  assert "4000 network evaluations" in proc.stdout and path in proc.stdout
  assert check_result(path, num_timesteps=100, num_examples=40, decoder="gaussian")["step"] == 10
  assert_fails_cleanly(evaluate(toy_workdir, "--num_examples=8"), "--overwrite")


def test_digits_run_gets_an_8_bit_bound(tmp_path):
  # A U-Net with random NumPy weights: compiling its init or train step would take half a minute.
  workdir = str(tmp_path / "digits")
  config = tiny_configs.digits_small()
  model = models.create_model(config)
  shape = run_loading.example_shape_for(config)
  shapes = jax.eval_shape(
    lambda k: train_state.create_train_state(config, model, shape, k), jax.random.key(0)
  )
  rng = np.random.default_rng(0)
  state = jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
  run_config.save_config(workdir, config)
  ckpt = checkpoints.Checkpointer(workdir)
  ckpt.save(0, state, wait=True)
  ckpt.close()
  out = str(tmp_path / "bpd.json")
  proc = evaluate(workdir, "--num_examples=6", "--batch_size=4", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  check_result(out, num_timesteps=20, num_examples=6, decoder="discretized")


@pytest.mark.parametrize(
  "flags, message", [([], "config.json"), (["--split=validation"], "unknown --split")]
)
def test_bad_input_fails_with_one_line(tmp_path, flags, message):
  assert_fails_cleanly(evaluate(tmp_path, *flags), message)


def test_builtin_data_has_no_test_split(toy_workdir):
  assert_fails_cleanly(evaluate(toy_workdir, "--split=test"), "only a train split")


def test_toy_run_gets_an_ode_likelihood(toy_workdir, tmp_path):
  out = str(tmp_path / "ode.json")
  proc = evaluate(
    toy_workdir, "--method=ode", "--num_examples=20", "--batch_size=8", f"--out={out}"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out) as f:
    result = json.load(f)
  assert result["method"] == "ode" and result["num_examples"] == 20
  assert math.isfinite(result["total_bpd"]) and result["total_bpd_stderr"] > 0
  # The adaptive solver's count is per batch, so the total is a sum of per-batch multiples.
  assert result["num_network_evals"] >= 20 * 7
  assert "ode:" in proc.stdout and "network evaluations" in proc.stdout
