"""What users must never lose, tried through the scripts: a run read while it trains, a second
writer, damaged checkpoints, bad data, Ctrl-C, and one-line errors for bad input."""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from diffusion_jax.training import checkpoints
from diffusion_jax.training import loop as train_loop
from tests import tiny_configs
from tests.scripts import ROOT, assert_fails_cleanly, run_script
from tests.test_cli import DIGITS_FLAGS, TOY_FLAGS

# Trains toy2d with a checkpoint every 10 steps, holding the save of step 20 open (its files
# written to `20.orbax-checkpoint-tmp`, not yet renamed into place) until the file `go` exists.
_TRAIN_WITH_A_SAVE_HELD_OPEN = textwrap.dedent(
  """
  import os, sys, time
  import orbax.checkpoint as ocp
  from diffusion_jax.training import loop as train_loop
  from tests import tiny_configs

  workdir, go = sys.argv[1], sys.argv[2]
  finalize = ocp.path.atomicity.AtomicRenameTemporaryPath.finalize

  async def held_finalize(self, *args, **kwargs):
    if os.path.basename(str(self.get_final())) == "20":
      print("holding", flush=True)
      while not os.path.exists(go):
        time.sleep(0.05)
    return await finalize(self, *args, **kwargs)

  ocp.path.atomicity.AtomicRenameTemporaryPath.finalize = held_finalize
  config = tiny_configs.toy(num_train_steps=30)
  config.training.checkpoint_every = 10
  train_loop.train_and_evaluate(config, workdir)
  print("trained", flush=True)
  """
)


def test_reading_a_run_while_it_saves_leaves_the_trainer_alone(tmp_path):
  workdir, go = str(tmp_path / "toy"), str(tmp_path / "go")
  trainer = subprocess.Popen(
    [sys.executable, "-c", _TRAIN_WITH_A_SAVE_HELD_OPEN, workdir, go],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    ready, _, _ = select.select([trainer.stdout], [], [], 120)
    assert ready and trainer.stdout.readline().strip() == "holding"
    held = os.path.join(workdir, "checkpoints", "20.orbax-checkpoint-tmp")
    assert os.path.isdir(held)
    sample = run_script("sample.py", f"--workdir={workdir}", "--num_samples=8", check=True)
    assert "step_0000010" in sample.stdout  # the newest complete checkpoint
    run_script("evaluate_bpd.py", f"--workdir={workdir}", "--num_examples=64", check=True)
    assert os.path.isdir(held)  # the readers left the save in progress alone
  finally:
    open(go, "w").close()
    stdout, stderr = trainer.communicate(timeout=300)
  assert trainer.returncode == 0 and "trained" in stdout, stderr[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20", "30"]


def _start_training(workdir, *flags):
  """Starts a long toy2d train.py and returns once it has logged its first metrics."""
  proc = subprocess.Popen(
    [
      sys.executable,
      "train.py",
      *TOY_FLAGS,
      "--config.training.num_train_steps=1000000",
      "--config.training.checkpoint_every=1000000",
      f"--workdir={workdir}",
      *flags,
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
    time.sleep(0.2)
  return proc


def test_a_second_writer_is_refused_and_the_first_keeps_training(tmp_path):
  workdir = str(tmp_path / "toy")
  first = _start_training(workdir)
  try:
    second = run_script(
      "train.py", *TOY_FLAGS, "--config.optim.learning_rate=0.5", f"--workdir={workdir}"
    )
    assert_fails_cleanly(second, f"{workdir} is being written by train.py (pid {first.pid})")
    assert first.poll() is None  # still training
    with open(os.path.join(workdir, "config.json")) as f:
      assert json.load(f)["optim"]["learning_rate"] == 1e-3  # the first run's, untouched
  finally:
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=300)
  assert first.returncode == 0, stderr[-3000:]


def test_ctrl_c_saves_a_checkpoint_and_stops(tmp_path):
  workdir = str(tmp_path / "toy")
  proc = _start_training(workdir)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  assert "SIGINT: saved a checkpoint at step" in stderr
  saved = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))]
  assert len(saved) == 1 and saved[0] >= 10


def test_damaged_checkpoints_fall_back_or_fail_in_one_line(tmp_path):
  workdir = str(tmp_path / "toy")
  train_loop.train_and_evaluate(tiny_configs.toy(num_train_steps=40), workdir)
  latest = os.path.join(workdir, "checkpoints", "40")
  os.remove(os.path.join(latest, "default", "_METADATA"))

  sample = run_script("sample.py", f"--workdir={workdir}", "--num_samples=4", check=True)
  assert "step_0000030" in sample.stdout
  assert f"checkpoint {latest} cannot be read" in sample.stderr
  assert len(sample.stderr.splitlines()) < 30  # no orbax traceback

  empty_folder(os.path.join(workdir, "checkpoints", "30"))
  proc = run_script("sample.py", f"--workdir={workdir}", "--step=30")
  assert_fails_cleanly(proc, f"checkpoint {workdir}/checkpoints/30 cannot be read: its folder is")

  empty_folder(os.path.join(workdir, "checkpoints", "20"))
  proc = run_script("sample.py", f"--workdir={workdir}")
  assert_fails_cleanly(proc, f"no checkpoint in {workdir}/checkpoints can be read (step 40 at")
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["20", "30", "40"]


def empty_folder(path):
  shutil.rmtree(path)
  os.mkdir(path)


def test_train_py_resumes_past_a_damaged_checkpoint(tmp_path):
  workdir = str(tmp_path / "toy")
  train_loop.train_and_evaluate(tiny_configs.toy(num_train_steps=40), workdir)
  latest = os.path.join(workdir, "checkpoints", "40")
  data_dir = os.path.join(latest, "default", "d")
  for name in os.listdir(data_dir):
    with open(os.path.join(data_dir, name), "r+b") as f:
      f.truncate(10)
  proc = run_script(
    "train.py", *TOY_FLAGS, "--config.training.num_train_steps=50", f"--workdir={workdir}"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"checkpoint {latest} cannot be read" in proc.stderr
  assert "resumed from step 30" in proc.stderr
  moved = os.path.join(workdir, checkpoints.UNREADABLE_DIRNAME, "40")
  assert os.path.isdir(moved) and "Traceback" not in proc.stderr
  assert "50" in os.listdir(os.path.join(workdir, "checkpoints"))


def _image_folder(path, num_images=8, size=8):
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(0)
  for i in range(num_images):
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(path, f"{i}.png"))


FOLDER_FLAGS = [*DIGITS_FLAGS, "--config.data.source=folder", "--config.data.num_channels=3"]


def test_a_damaged_image_is_one_line_and_the_fixed_rerun_starts(tmp_path):
  images = str(tmp_path / "images")
  _image_folder(images)
  bad = os.path.join(images, "3.png")
  with open(bad, "r+b") as f:
    f.truncate(60)
  workdir = str(tmp_path / "run")
  flags = [*FOLDER_FLAGS, f"--config.data.path={images}", f"--workdir={workdir}"]
  proc = run_script("train.py", *flags)
  assert_fails_cleanly(proc, f"cannot read image {bad}: image file is truncated")
  assert not os.path.exists(os.path.join(workdir, "config.json"))
  os.remove(bad)
  # No "holds a different config": the failed start recorded nothing. (0 steps: it only starts.)
  run_script("train.py", *flags, "--config.training.num_train_steps=0", check=True)
  assert os.path.exists(os.path.join(workdir, "config.json"))


def test_folder_and_npz_data_need_a_path(tmp_path):
  for source in ("folder", "npz"):
    proc = run_script(
      "train.py", *DIGITS_FLAGS, f"--config.data.source={source}", f"--workdir={tmp_path / source}"
    )
    assert_fails_cleanly(proc, f"data.source={source} needs data.path")


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--config.model.ch_mult=abc"], "config field model.ch_mult must be a tuple of positive"),
    (["--config.data.image_size=-8"], "config field data.image_size must be at least 1; got -8"),
    (["--config.data.image_size=0"], "config field data.image_size must be at least 1; got 0"),
    (
      ["--config.training.steps_per_call=3"],
      "config field training.log_every must be a multiple of training.steps_per_call 3; got 2",
    ),
    (
      ["--config.training.num_train_stepz=3"],
      "no such config field 'num_train_stepz'; Did you mean \"num_train_steps\"",
    ),
  ],
)
def test_bad_config_values_are_one_line(tmp_path, flags, message):
  proc = run_script("train.py", *DIGITS_FLAGS, *flags, f"--workdir={tmp_path / 'run'}")
  assert_fails_cleanly(proc, message)
  assert "\\" not in proc.stderr
  assert not os.path.exists(tmp_path / "run" / "config.json")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("toy_run"))
  train_loop.train_and_evaluate(tiny_configs.toy(num_train_steps=20), workdir)
  return workdir


@pytest.mark.parametrize(
  "script, flags, message",
  [
    ("sample.py", ["--out=README.md"], "--out README.md is a file"),
    ("sample.py", ["--batch_size=0"], "flag --batch_size=0: 0 is not a positive integer"),
    ("sample.py", ["--num_samples=0"], "flag --num_samples=0: 0 is not a positive integer"),
    ("evaluate.py", ["--batch_size=0"], "flag --batch_size=0: 0 is not a positive integer"),
    ("evaluate_bpd.py", ["--batch_size=-1"], "flag --batch_size=-1: -1 is not a positive"),
    ("sample.py", ["--steps=0"], "flag --steps=0: 0 is not a positive integer"),
  ],
)
def test_bad_reader_flags_are_one_line_before_any_work(toy_run, script, flags, message):
  proc = run_script(script, f"--workdir={toy_run}", *flags)
  assert_fails_cleanly(proc, message)
  assert "sampling" not in proc.stderr  # refused before drawing anything


def test_a_truncated_config_json_is_named(tmp_path, toy_run):
  workdir = str(tmp_path / "copy")
  shutil.copytree(toy_run, workdir)
  path = os.path.join(workdir, "config.json")
  with open(path, "r+") as f:
    f.truncate(100)
  for script in ("sample.py", "evaluate_bpd.py", "train.py"):
    args = [*TOY_FLAGS] if script == "train.py" else []
    proc = run_script(script, *args, f"--workdir={workdir}")
    assert_fails_cleanly(proc, f"{path} is not valid JSON")


def test_no_backend_probing_noise(tmp_path, toy_run):
  proc = run_script(
    "sample.py", f"--workdir={toy_run}", "--num_samples=4", f"--out={tmp_path}", check=True
  )
  assert "libtpu" not in proc.stderr and "Unable to initialize backend" not in proc.stderr
