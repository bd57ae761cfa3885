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


def test_xla_flags_device_count_is_left_alone(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", f"{cpu_devices.FORCE_FLAG}=4")
  assert cpu_devices.set_cpu_devices(None) is None
  with pytest.raises(ValueError, match="--cpu_devices and XLA_FLAGS' --xla_force_host_platform"):
    cpu_devices.set_cpu_devices(3)
  # As train.py says it.
  args = ["--config=configs/digits.py", "--workdir=/nonexistent/run", "--cpu_devices=3"]
  assert_fails_cleanly(run_script("train.py", *args), "--cpu_devices and XLA_FLAGS'")


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
