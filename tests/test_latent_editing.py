"""edit.py and analyze.py on a latent diffusion run: edits take and give images and equal the
decoded edits of the encoded inputs, inpainting's mask in latent cells against NumPy, and the
likelihood measures that refuse latents."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from diffusion_jax import samplers
from diffusion_jax.cli import analysis_commands, edit_commands
from diffusion_jax.editing import inpainting, interpolation, sdedit
from diffusion_jax.evaluation import run_loading
from diffusion_jax.training import latent_space
from diffusion_jax.training import loop as train_loop
from tests import tiny_configs
from tests.scripts import assert_fails_cleanly, run_script

SPEC = samplers.SamplerSpec("ddim", steps=2)


@pytest.fixture(scope="module")
def latent_workdir(autoencoder_dir, tmp_path_factory) -> str:
  """A tiny_configs.digits_latent run of 2 steps on 8x8 digits (4x4x2 latents), shared here."""
  workdir = str(tmp_path_factory.mktemp("latent_run"))
  train_loop.train_and_evaluate(tiny_configs.digits_latent(autoencoder_dir), workdir)
  return workdir


@pytest.fixture(scope="module")
def run(latent_workdir) -> run_loading.LoadedRun:
  return run_loading.load_run(latent_workdir)


def _digits(run, n: int) -> np.ndarray:
  return edit_commands.input_images(run, None, [str(i) for i in range(n)])


def _decoded(run, z) -> np.ndarray:
  """D(z / scale), straight from the autoencoder."""
  space = run.latents
  return np.asarray(latent_space.decoded(space.vae, space.params, jnp.asarray(z) / space.scale))


def test_a_latent_cell_is_kept_only_where_all_its_pixels_are():
  rng = np.random.default_rng(0)
  keep = (rng.random((8, 12, 1)) < 0.8).astype(np.float32)
  cells = edit_commands.latent_keep(keep, 2)
  expected = [
    [keep[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].all() for j in range(6)] for i in range(4)
  ]
  np.testing.assert_array_equal(cells, np.float32(expected)[..., None])
  assert 0 < cells.sum() < 24
  # One generated pixel makes its whole cell generated.
  keep = np.ones((8, 8, 1), np.float32)
  keep[5, 2] = 0
  cells = edit_commands.latent_keep(keep, 4)
  np.testing.assert_array_equal(cells[..., 0], [[1, 1], [0, 1]])
  # Generating everything stays possible, as on an image run.
  assert not edit_commands.latent_keep(np.zeros((4, 4, 1), np.float32), 2).any()
  checkerboard = (np.indices((4, 4)).sum(0) % 2).astype(np.float32)[..., None]
  with pytest.raises(ValueError, match="keeps no whole 2x2 patch of pixels"):
    edit_commands.latent_keep(checkerboard, 2)


def test_inputs_are_read_at_the_images_size_not_the_latents(run, tmp_path):
  assert run.example_shape == (4, 4, 2) and run.data_shape == (8, 8, 1)
  small = str(tmp_path / "small.png")
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(small)
  with pytest.raises(ValueError, match="is 4x4; the run's images are 8x8"):
    edit_commands.input_images(run, [small], None)


def test_inpainting_a_latent_run_keeps_the_known_pixels_and_decodes_the_rest(run):
  x = _digits(run, 2)
  keep = edit_commands.known_mask("left", run.data_shape)
  rows, results = edit_commands.inpaint_rows(run, x, keep, SPEC, 2, 0, resample=2, jump_length=1)
  assert rows.shape == (2, 4, 8, 8, 1) and results.shape == (4, 8, 8, 1)
  repeated = np.repeat(x, 2, axis=0)
  np.testing.assert_array_equal(results[:, :, 4:], repeated[:, :, 4:])
  latents = inpainting.inpaint(
    run.denoiser(),
    run.sched,
    run.latents.encode(jnp.asarray(repeated)),
    jnp.asarray(edit_commands.latent_keep(keep, 2)),
    jax.random.key(0),
    SPEC,
    resample=2,
  ).x
  np.testing.assert_allclose(results[:, :, :4], _decoded(run, latents)[:, :, :4], atol=1e-5)


def test_sdedit_of_a_latent_run_is_the_decoded_sdedit_of_its_latents(run):
  x = _digits(run, 2)
  rows, edits = edit_commands.sdedit_rows(run, x, SPEC, 0.5, 2, 0)
  assert rows.shape == (2, 4, 8, 8, 1) and edits.shape == (4, 8, 8, 1)
  expected = sdedit.sdedit(
    run.denoiser(),
    run.sched,
    run.latents.encode(jnp.asarray(np.repeat(x, 2, axis=0))),
    jax.random.key(0),
    SPEC,
    strength=0.5,
    trajectory_every=len(samplers.grid(SPEC, run.sched)),
  )
  np.testing.assert_allclose(edits, _decoded(run, expected.x), atol=1e-5)
  np.testing.assert_array_equal(rows[:, 0], x)
  np.testing.assert_allclose(rows[:, 1], _decoded(run, expected.trajectory[0])[::2], atol=1e-5)
  np.testing.assert_array_equal(rows[:, 2:].reshape(edits.shape), edits)


@pytest.mark.parametrize("method", ["stochastic", "deterministic"])
def test_interpolating_a_latent_run_decodes_the_frames_between_its_latents(run, method):
  x = _digits(run, 2)
  frames = edit_commands.interpolation_frames(run, x, SPEC, method, 3, 0.5, 0)
  assert frames.shape == (3, 8, 8, 1)
  z = run.latents.encode(jnp.asarray(x))
  if method == "stochastic":
    expected = interpolation.stochastic(
      run.denoiser(), run.sched, z[:1], z[1:], jax.random.key(0), SPEC, num_frames=3
    )
  else:
    expected = interpolation.deterministic(
      run.denoiser(), run.sched, z[:1], z[1:], SPEC, num_frames=3
    )
  np.testing.assert_allclose(frames, _decoded(run, expected[:, 0]), atol=1e-5)


def test_progressive_generation_of_a_latent_run_shows_images(run):
  pictures, gif = analysis_commands.progressive_pictures(run, SPEC, 2, 3, 0)
  pixel_panels = analysis_commands._panels(run, np.zeros((3, 2, 8, 8, 1)), ["t"] * 3)
  for name in ("forward", "reverse", "progressive"):
    assert pictures[name].shape == pixel_panels.shape, name
  assert len(gif) == 6


def test_edit_py_inpaints_a_latent_run(latent_workdir, tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8), dtype=np.uint8)
  files = []
  for i, p in enumerate(pixels):
    files.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(p).save(files[-1])
  out = str(tmp_path / "inpaint")
  run_script(
    "edit.py",
    "inpaint",
    f"--workdir={latent_workdir}",
    f"--images={','.join(files)}",
    "--mask=center",
    "--variants=1",
    f"--out={out}",
    check=True,
  )
  results = np.load(os.path.join(out, "inpaint.npz"))["arr_0"]
  assert results.shape == (2, 8, 8, 1) and results.dtype == np.uint8
  keep = edit_commands.known_mask("center", (8, 8, 1))[..., 0] == 1
  np.testing.assert_array_equal(results[..., 0][:, keep], pixels[:, keep])
  assert os.path.exists(os.path.join(out, "inpaint.png"))


@pytest.mark.parametrize(
  "script, args, message",
  [
    (
      "analyze.py",
      ["rate_distortion"],
      "analyze.py rate_distortion does not take a latent diffusion run (data.autoencoder_run): "
      "its rate is bits of the images' discretized likelihood",
    ),
    (
      "evaluate_bpd.py",
      [],
      "evaluate_bpd.py does not take a latent diffusion run (data.autoencoder_run): bits/dim of "
      "its latents are no likelihood of the images",
    ),
  ],
)
def test_likelihood_measures_refuse_a_latent_run(latent_workdir, script, args, message):
  proc = run_script(script, *args, f"--workdir={latent_workdir}")
  assert proc.returncode == 1
  assert_fails_cleanly(proc, message)
