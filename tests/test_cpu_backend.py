"""The scripts' CPU backend: the automatic device count, what XLA_FLAGS already sets, the count the
CPU client then has, the convolutions' flag, and the restart with huge pages."""

import os
import subprocess
import sys

import pytest

from diffusion_jax.cli import cpu_backend, host_memory
from tests.scripts import ROOT, assert_fails_cleanly, run_script


@pytest.mark.parametrize(
  "batches_split, cores, devices",
  [(True, 2, 2), (True, 16, 2), (True, 1, 1), (False, 2, 1)],
)
def test_two_devices_where_there_are_cores_and_the_batches_split(batches_split, cores, devices):
  assert cpu_backend.automatic_count(batches_split, cores) == devices


@pytest.mark.parametrize(
  "batch_size, grad_accum_steps, split",
  [(64, 1, True), (64, 2, True), (16, 1, True), (8, 1, False), (32, 4, False), (65, 1, False)],
)
def test_training_batches_split_in_halves_of_at_least_8(batch_size, grad_accum_steps, split):
  assert cpu_backend.micro_batches_split(batch_size, grad_accum_steps) == split


@pytest.mark.parametrize(
  "variable, value", [("XLA_FLAGS", f"{cpu_backend.FORCE_FLAG}=4"), ("JAX_NUM_CPU_DEVICES", "4")]
)
def test_a_count_the_environment_sets_is_left_alone(monkeypatch, variable, value):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv(variable, value)
  assert cpu_backend.set_cpu_devices(None) is None
  with pytest.raises(ValueError, match="--cpu_devices and the environment"):
    cpu_backend.set_cpu_devices(3)


def test_train_py_splits_the_cpu_and_says_so(tmp_path):
  if cpu_backend.available_cores() < 2:
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
  if requested is None and cpu_backend.available_cores() < 2:
    pytest.skip("the automatic split needs 2 cores")
  code = (
    "import jax\n"
    "from diffusion_jax.cli import cpu_backend, host_memory\n"
    f"cpu_backend.set_cpu_devices({requested})\n"
    "print(jax.device_count())\n"
  )
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
  )
  assert out.stdout.split() == [str(devices)]


@pytest.mark.parametrize(
  "devices, jaxlib_version, xla_flags, added",
  [
    (1, "0.10.2", "", True),
    (1, "0.10.0.dev20260101", "--xla_cpu_enable_fast_math=false", True),
    (2, "0.10.2", "", False),  # several devices: their Eigen convolutions race
    (None, "0.10.2", "", False),  # the environment sets the devices
    (1, "0.10.2", f"{cpu_backend.CONV_FLAG}=-reduce", False),  # the user's choice stands
    (1, "0.9.0", "", False),  # a release the flag was not checked on: an unknown flag is fatal
  ],
)
def test_eigen_convolutions_on_one_device_where_jaxlib_takes_the_flag(
  monkeypatch, devices, jaxlib_version, xla_flags, added
):
  monkeypatch.setenv("XLA_FLAGS", xla_flags)
  assert cpu_backend.use_eigen_convolutions(devices, jaxlib_version) == added
  flags = os.environ["XLA_FLAGS"].split()
  assert flags == xla_flags.split() + ([cpu_backend.EIGEN_CONVOLUTIONS] if added else [])


def test_the_script_process_restarts_once_with_huge_pages():
  """The same pid before and after, the tunable set, and no second restart."""
  if host_memory.thp_mode() != "madvise" or not host_memory._glibc_takes_tunable():
    pytest.skip("huge pages on request need glibc >= 2.35 and the kernel's THP mode 'madvise'")
  code = (
    "import os\n"
    "from diffusion_jax.cli import host_memory\n"
    "print(os.getpid(), os.environ.get('GLIBC_TUNABLES'), flush=True)\n"
    "host_memory.restart_with_huge_pages()\n"
  )
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env["GLIBC_TUNABLES"] = "glibc.malloc.arena_max=4"  # kept alongside
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
  )
  first, second = out.stdout.splitlines()
  assert first.split()[1] == "glibc.malloc.arena_max=4"
  assert second.split() == [first.split()[0], "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"]


@pytest.mark.parametrize(
  "text, mode", [("always [madvise] never", "madvise"), ("[always] madvise never", "always")]
)
def test_thp_mode_reads_the_bracketed_word(tmp_path, text, mode):
  path = tmp_path / "enabled"
  path.write_text(text + "\n")
  assert host_memory.thp_mode(str(path)) == mode
  assert host_memory.thp_mode(str(tmp_path / "missing")) is None
