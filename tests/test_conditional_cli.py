"""train.py and sample.py on a tiny class-conditional digits run: labels, per-class grids and
animations, guidance, and one-line errors for labels a run cannot take."""

import json
import os
import types

import numpy as np
import pytest
from PIL import Image

from diffusion_jax.cli import sample_outputs
from diffusion_jax.metrics import sample_quality
from tests.scripts import assert_fails_cleanly, run_script
from tests.test_cli import DIGITS_FLAGS

COND_FLAGS = ["--config=configs/digits_cond.py", *DIGITS_FLAGS[1:]]


def test_conditional_digits_train_then_sample_by_class(tmp_path):
  workdir = str(tmp_path / "digits")
  run_script("train.py", *COND_FLAGS, f"--workdir={workdir}", check=True)
  assert os.path.exists(os.path.join(workdir, "classes.json"))
  out = str(tmp_path / "grid")
  args = [f"--workdir={workdir}", "--batch_size=8", "--sampler=ddim", "--steps=5"]
  grid = ["--per_class=2", "--guidance=2", "--gif", f"--out={out}"]
  run_script("sample.py", *args, *grid, check=True)
  saved = np.load(os.path.join(out, "samples.npz"))
  assert saved["arr_0"].shape == (20, 8, 8, 1) and saved["arr_0"].dtype == np.uint8
  np.testing.assert_array_equal(saved["labels"], np.repeat(np.arange(10), 2))
  for name in ("samples.png", "reverse.gif"):
    width, height = Image.open(os.path.join(out, name)).size
    assert height > 4 * width  # 10 rows of 2: one row per class

  out = str(tmp_path / "listed")
  run_script("sample.py", *args, "--labels=3,3,7", f"--out={out}", check=True)
  np.testing.assert_array_equal(np.load(os.path.join(out, "samples.npz"))["labels"], [3, 3, 7])

  bad = run_script("sample.py", *args, "--labels=3,10", f"--out={tmp_path / 'bad'}")
  assert_fails_cleanly(bad, "unknown class label '10'; give 0..9 or one of 0, 1")

  # edit.py inpaints towards a class, under guidance.
  out = str(tmp_path / "edit")
  edit = ["inpaint", "--data_index=0", "--label=7", "--guidance=1", "--variants=2", f"--out={out}"]
  run_script("edit.py", *edit, *args[:1], *args[2:], check=True)
  assert np.load(os.path.join(out, "inpaint.npz"))["arr_0"].shape == (2, 8, 8, 1)

  # evaluate.py draws the classes in turn and adds the digits classifier's accuracy on them.
  flags = ["--num_samples=20", "--batch_size=8", "--sampler=ddim", "--steps=4", "--metrics=fid"]
  proc = run_script("evaluate.py", f"--workdir={workdir}", *flags, "--guidance=2", check=True)
  with open(proc.stdout.strip().splitlines()[-1]) as f:
    results = json.load(f)
  assert results["guidance"] == 2.0 and 0.0 <= results["accuracy"] <= 1.0
  assert len(results["per_class_accuracy"]) == 10 and np.isfinite(results["fid"])


def test_class_accuracy():
  got = sample_quality.class_accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]), 4)
  assert got["accuracy"] == 0.75 and got["per_class_accuracy"][:3] == [1.0, 0.5, 1.0]
  assert np.isnan(got["per_class_accuracy"][3])  # no samples of class 3


def test_class_labels_of_runs():
  run = types.SimpleNamespace(num_classes=3, class_names=("cat", "dog", "emu"))
  np.testing.assert_array_equal(sample_outputs.class_labels(run, ["emu", "0"], None, 5), [2, 0])
  np.testing.assert_array_equal(sample_outputs.class_labels(run, None, None, 5), [0, 1, 2, 0, 1])
  with pytest.raises(ValueError, match="not both"):
    sample_outputs.class_labels(run, ["1"], 2, 5)
  plain = types.SimpleNamespace(num_classes=0, class_names=())
  assert sample_outputs.class_labels(plain, None, None, 5) is None
  with pytest.raises(ValueError, match="unconditional .model.num_classes=0.; it takes no labels"):
    sample_outputs.class_labels(plain, ["1"], None, 5)
