"""train.py and sample.py end to end on tiny configs, preemption, and each bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.scripts import ROOT, assert_fails_cleanly, run_script

TOY_FLAGS = [
  "--config=configs/toy2d.py",
  "--config.model.hidden_dim=32",
  "--config.training.batch_size=64",
  "--config.training.log_every=10",
  "--config.training.checkpoint_every=20",
  "--config.training.sample_every=20",
  "--config.training.num_sample_images=64",
  "--config.sampling.batch_size=64",
  "--config.data.num_points=512",
]
DIGITS_FLAGS = [
  "--config=configs/digits.py",
  "--config.data.image_size=8",
  "--config.model.ch=8",
  "--config.model.ch_mult=(1,2)",
  "--config.model.attn_resolutions=(4,)",
  "--config.model.num_groups=4",
  "--config.diffusion.num_timesteps=20",
  "--config.training.batch_size=8",
  "--config.training.grad_accum_steps=1",  # one program per step: quicker to compile
  "--config.training.num_train_steps=4",
  "--config.training.log_every=2",
  "--config.training.checkpoint_every=2",
  "--config.training.sample_every=4",
  "--config.training.num_sample_images=8",
  "--config.sampling.batch_size=8",
  "--config.sampling.steps=10",
  "--config.eval.every_steps=0",
]


def run(script, *args, check=True):
  return run_script(script, *args, check=check)


def test_toy2d_train_then_sample_with_gif(tmp_path):
  workdir = str(tmp_path / "toy")
  run("train.py", *TOY_FLAGS, "--config.training.num_train_steps=40", f"--workdir={workdir}")
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["20", "40"]
  assert os.path.exists(os.path.join(workdir, "previews", "step_0000040.png"))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == [10, 20, 30, 40]
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))

  out = str(tmp_path / "out")
  proc = run("sample.py", f"--workdir={workdir}", "--num_samples=100", f"--out={out}", "--gif")
  points = np.load(os.path.join(out, "samples.npz"))["arr_0"]
  assert points.shape == (100, 2) and points.dtype == np.float32 and np.isfinite(points).all()
  gif = Image.open(os.path.join(out, "reverse.gif"))
  assert gif.n_frames > 20  # the forward half, then the reverse half
  assert Image.open(os.path.join(out, "samples.png")).size[0] > 100
  assert os.path.join(out, "samples.npz") in proc.stdout

  # Outputs are never overwritten silently.
  again = run("sample.py", f"--workdir={workdir}", f"--out={out}", check=False)
  assert_fails_cleanly(again, "already holds outputs")

  # The seed tutorial's strips: 256-pixel scatter panels of q(x_t) and of the reverse chain.
  out = str(tmp_path / "analysis")
  run("analyze.py", "progressive", f"--workdir={workdir}", "--num_samples=50", f"--out={out}")
  for name in ("forward.png", "reverse.png", "progressive.png"):
    assert Image.open(os.path.join(out, name)).size[0] >= 10 * 256, name
  assert Image.open(os.path.join(out, "forward_reverse.gif")).n_frames >= 20


def test_digits_train_then_sample_images(tiny_digits_run, tmp_path):
  workdir = tiny_digits_run
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  out = str(tmp_path / "samples")
  run(
    "sample.py",
    f"--workdir={workdir}",
    "--num_samples=6",
    "--batch_size=4",
    "--step=2",
    f"--out={out}",
  )
  images = np.load(os.path.join(out, "samples.npz"))["arr_0"]
  assert images.shape == (6, 8, 8, 1) and images.dtype == np.uint8
  assert images.std() > 0
  grid = np.asarray(Image.open(os.path.join(out, "samples.png")))
  assert grid.shape[0] > 16


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path):
  workdir = str(tmp_path / "toy")
  args = [*TOY_FLAGS, "--config.training.checkpoint_every=100000", f"--workdir={workdir}"]
  proc = subprocess.Popen(
    [sys.executable, "train.py", *args, "--config.training.num_train_steps=100000"],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
    assert proc.poll() is None and time.time() < deadline, "training did not start"
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  saved = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))]
  assert len(saved) == 1 and saved[0] >= 10, stderr[-2000:]
  resumed = run("train.py", *args, f"--config.training.num_train_steps={saved[0] + 10}")
  assert f"resumed from step {saved[0]}" in resumed.stderr
  assert str(saved[0] + 10) in os.listdir(os.path.join(workdir, "checkpoints"))


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--config.training.no_such_field=1"], "no_such_field"),
    (["--config.data.name=no_such_toy"], "unknown builtin dataset"),
    (
      ["--config.data.source=tfds", "--config.data.name=no_such_tfds_dataset"],
      "no_such_tfds_dataset",
    ),
    (["--config.diffusion.schedule=no_such_schedule"], "diffusion.schedule must be one of"),
  ],
)
def test_bad_toy_config_fails_with_one_line(tmp_path, flags, message):
  proc = run("train.py", *TOY_FLAGS, *flags, f"--workdir={tmp_path}", check=False)
  assert_fails_cleanly(proc, message)


def test_image_size_the_unet_cannot_halve(tmp_path):
  proc = run(
    "train.py", *DIGITS_FLAGS, "--config.data.image_size=10", f"--workdir={tmp_path}", check=False
  )
  assert_fails_cleanly(proc, "image_size 10")


def test_empty_image_folder(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  proc = run(
    "train.py",
    *DIGITS_FLAGS,
    "--config.data.source=folder",
    f"--config.data.path={empty}",
    f"--workdir={tmp_path / 'run'}",
    check=False,
  )
  assert_fails_cleanly(proc, str(empty))


def test_sample_without_checkpoint(tmp_path):
  proc = run("sample.py", f"--workdir={tmp_path}", check=False)
  assert_fails_cleanly(proc, str(tmp_path))


def test_checkpoint_from_a_different_model_config(tmp_path):
  workdir = str(tmp_path / "toy")
  run("train.py", *TOY_FLAGS, "--config.training.num_train_steps=20", f"--workdir={workdir}")
  proc = run(
    "train.py",
    *TOY_FLAGS,
    "--config.training.num_train_steps=40",
    "--config.model.hidden_dim=48",
    f"--workdir={workdir}",
    check=False,
  )
  assert_fails_cleanly(proc, "does not match the model config")
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["20"]  # nothing lost
