"""edit.py and analyze.py end to end on a tiny digits run, and their input checks."""

import json
import os
import types

import numpy as np
import pytest
from PIL import Image

from diffusion_jax.cli import edit_commands
from tests.scripts import assert_fails_cleanly, run_script


def _png(path, pixels):
  Image.fromarray(pixels).save(path)
  return str(path)


@pytest.mark.slow
def test_edit_commands_on_image_files_and_training_digits(tiny_digits_run, tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (2, 8, 8), dtype=np.uint8)
  files = [_png(tmp_path / f"{i}.png", p) for i, p in enumerate(pixels)]
  edit = lambda *a: run_script("edit.py", *a, f"--workdir={tiny_digits_run}", check=True)  # noqa: E731

  out = str(tmp_path / "inpaint")
  edit("inpaint", f"--images={','.join(files)}", "--variants=2", "--resample=2", f"--out={out}")
  results = np.load(os.path.join(out, "inpaint.npz"))["arr_0"]
  assert results.shape == (4, 8, 8, 1) and results.dtype == np.uint8
  kept = np.repeat(pixels, 2, axis=0)[:, :, 4:]  # --mask=left generates the left half
  np.testing.assert_array_equal(results[:, :, 4:, 0], kept)
  assert not np.array_equal(results[:, :, :4, 0], np.repeat(pixels, 2, axis=0)[:, :, :4])
  assert Image.open(os.path.join(out, "inpaint.png")).size[0] >= 4 * 32

  out = str(tmp_path / "sdedit")
  edit("sdedit", f"--images={files[0]}", "--variants=3", "--strength=0.3", f"--out={out}")
  assert np.load(os.path.join(out, "sdedit.npz"))["arr_0"].shape == (3, 8, 8, 1)

  out = str(tmp_path / "interpolate")
  edit("interpolate", "--data_index=2,3", "--frames=4", "--method=deterministic", f"--out={out}")
  assert np.load(os.path.join(out, "interpolate.npz"))["arr_0"].shape == (4, 8, 8, 1)
  assert Image.open(os.path.join(out, "interpolate.gif")).n_frames > 1

  wrong = _png(tmp_path / "big.png", np.zeros((16, 16), np.uint8))
  proc = run_script("edit.py", "sdedit", f"--workdir={tiny_digits_run}", f"--images={wrong}")
  assert_fails_cleanly(proc, "is 16x16; the run's images are 8x8")


@pytest.mark.slow
def test_analyses_of_a_tiny_digits_run(tiny_digits_run, tmp_path):
  out = str(tmp_path / "rd")
  run_script(
    "analyze.py",
    "rate_distortion",
    f"--workdir={tiny_digits_run}",
    "--num_examples=8",
    f"--out={out}",
    check=True,
  )
  with open(os.path.join(out, "rate_distortion.json")) as f:
    curve = json.load(f)
  rate, distortion = np.asarray(curve["rate_bpd"]), np.asarray(curve["distortion_rmse"])
  assert rate.shape == distortion.shape == (21,)  # T = 20 steps, and x_T
  assert np.all(np.diff(rate) >= 0) and distortion[-1] == 0 and distortion[0] > 10
  assert os.path.exists(os.path.join(out, "rate_distortion.png"))

  out = str(tmp_path / "progressive")
  run_script(
    "analyze.py",
    "progressive",
    f"--workdir={tiny_digits_run}",
    "--num_samples=3",
    "--frames=5",
    f"--out={out}",
    check=True,
  )
  for name in ("forward.png", "reverse.png", "progressive.png"):
    picture = np.asarray(Image.open(os.path.join(out, name)))
    assert picture.shape[0] >= 3 * 32 and picture.shape[1] >= 5 * 32, name
  assert Image.open(os.path.join(out, "forward_reverse.gif")).n_frames >= 10


def test_masks_and_inputs_are_checked(tmp_path):
  keep = edit_commands.known_mask("left", (4, 6, 1))
  np.testing.assert_array_equal(keep[..., 0], np.tile([0, 0, 0, 1, 1, 1], (4, 1)))
  keep = edit_commands.known_mask("center", (4, 4, 3))
  assert keep[..., 0].sum() == 12 and keep[1:3, 1:3].sum() == 0
  drawn = np.zeros((4, 6), np.uint8)
  drawn[0, 0] = 255  # white: generate
  keep = edit_commands.known_mask(_png(tmp_path / "m.png", drawn), (4, 6, 1))
  assert keep[0, 0, 0] == 0 and keep.sum() == 23
  with pytest.raises(ValueError, match="nothing to generate"):
    edit_commands.known_mask(_png(tmp_path / "z.png", np.zeros((4, 6), np.uint8)), (4, 6, 1))
  with pytest.raises(ValueError, match="mask .* is 6x4; the run's images are 8x8"):
    edit_commands.known_mask(str(tmp_path / "m.png"), (8, 8, 1))
  with pytest.raises(ValueError, match="neither a file nor one of left, right"):
    edit_commands.known_mask("lefty", (8, 8, 1))
  (tmp_path / "notes.txt").write_text("not an image")
  with pytest.raises(ValueError, match="cannot read the mask"):
    edit_commands.known_mask(str(tmp_path / "notes.txt"), (8, 8, 1))
  rgb = _png(tmp_path / "rgb.png", np.zeros((8, 8, 3), np.uint8))
  run = types.SimpleNamespace(data_shape=(8, 8, 1))
  with pytest.raises(ValueError, match="has 3 channel"):
    edit_commands.input_images(run, [rgb], None)
  with pytest.raises(ValueError, match="--images=a.png"):
    edit_commands.input_images(run, [rgb], ["1"])
  with pytest.raises(ValueError, match="example numbers 0, 1, ...; got 'x'"):
    edit_commands.input_images(run, None, ["1", "x"])
  with pytest.raises(ValueError, match="image runs"):
    edit_commands.input_images(types.SimpleNamespace(data_shape=(2,)), [rgb], None)
