"""The training scripts' CPU devices: the automatic choice, what XLA_FLAGS already sets, and the
count the CPU client then has."""

import os
import subprocess
import sys

import pytest

from diffusion_jax.cli import cpu_devices
from tests.scripts import ROOT, assert_fails_cleanly, run_script


@pytest.mark.parametrize(
  "batches_split, cores, devices",
  [(True, 2, 2), (True, 16, 2), (True, 1, 1), (False, 2, 1)],
)
def test_two_devices_where_there_are_cores_and_the_batches_split(batches_split, cores, devices):
  assert cpu_devices.automatic_count(batches_split, cores) == devices


@pytest.mark.parametrize(
  "batch_size, grad_accum_steps, split",
  [(64, 1, True), (64, 2, True), (6, 2, False), (65, 1, False)],
)
def test_training_batches_split_where_each_micro_batch_halves(batch_size, grad_accum_steps, split):
  assert cpu_devices.micro_batches_split(batch_size, grad_accum_steps) == split


@pytest.mark.parametrize(
  "variable, value", [("XLA_FLAGS", f"{cpu_devices.FORCE_FLAG}=4"), ("JAX_NUM_CPU_DEVICES", "4")]
)
def test_a_count_the_environment_sets_is_left_alone(monkeypatch, variable, value):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv(variable, value)
  assert cpu_devices.set_cpu_devices(None) is None
  with pytest.raises(ValueError, match="--cpu_devices and the environment"):
    cpu_devices.set_cpu_devices(3)


def test_train_py_splits_the_cpu_and_says_so(tmp_path):
  if cpu_devices.available_cores() < 2:
    pytest.skip("the automatic split needs 2 cores")
  args = [
    "--config=configs/toy2d.py",
    f"--workdir={tmp_path}",
    "--config.training.num_train_steps=0",
  ]
  proc = run_script("train.py", *args, check=True, env={"XLA_FLAGS": ""})
  assert "the CPU runs as 2 devices" in proc.stderr, proc.stderr[-3000:]
  # With the tests' XLA_FLAGS, an explicit count is an error of one line.
  args = ["--config=configs/digits.py", "--workdir=/nonexistent/run", "--cpu_devices=3"]
  assert_fails_cleanly(run_script("train.py", *args), "--cpu_devices and the environment")


@pytest.mark.parametrize("requested, devices", [(None, 2), (3, 3)])
def test_the_cpu_client_gets_the_count(requested, devices):
  if requested is None and cpu_devices.available_cores() < 2:
    pytest.skip("the automatic split needs 2 cores")
  code = (
    "import jax\n"
    "from diffusion_jax.cli import cpu_devices\n"
    f"cpu_devices.set_cpu_devices({requested})\n"
    "print(jax.device_count())\n"
  )
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
  )
  assert out.stdout.split() == [str(devices)]
