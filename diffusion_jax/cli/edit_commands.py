"""What edit.py does: read inputs and masks, run SDEdit, inpainting or interpolation on a loaded
run, and lay the results out as pictures (one row per input).

Inputs and results are images. A latent diffusion run edits its autoencoder's latents: the inputs
are encoded, the edit runs on the latents, and the results are decoded."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import data, figures, images, models
from diffusion_jax.editing import inpainting, interpolation, sdedit
from diffusion_jax.evaluation.run_loading import LoadedRun
from diffusion_jax.samplers import SamplerSpec, grid

MASK_PRESETS = ("left", "right", "top", "bottom", "center")


def input_images(run: LoadedRun, paths: list[str] | None, indices: list[str] | None) -> np.ndarray:
  """The images to edit, float32 [N, H, W, C] in [-1, 1]: PNG/JPEG files or training examples."""
  if len(run.data_shape) != 3:
    raise ValueError("edit.py works on image runs; this run's data are vectors")
  if bool(paths) == bool(indices):
    raise ValueError("give the images to edit as --images=a.png,... or --data_index=0,5,...")
  if paths:
    return np.stack([images.load_image(path, run.data_shape) for path in paths])
  bad = [i for i in indices if not i.strip().isdigit()]
  if bad:
    raise ValueError(f"--data_index takes example numbers 0, 1, ...; got {bad[0]!r}")
  ds = data.create_dataset(run.config.data, 1, run.config.seed, process_index=0, process_count=1)
  return ds.examples_at([int(i) for i in indices])


def known_mask(mask: str, example_shape: tuple[int, ...]) -> np.ndarray:
  """float32 [H, W, 1]: 1 where the image is kept, 0 where it is generated.

  `mask` names the region to generate: a preset (left, right, top or bottom half, or the center
  square of half the side), or a PNG/JPEG of the image's size whose white pixels (>= 128) are
  generated and black ones kept.
  """
  height, width, _ = example_shape
  fill = np.zeros((height, width), bool)
  rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
  if mask == "left":
    fill |= cols < width // 2
  elif mask == "right":
    fill |= cols >= width // 2
  elif mask == "top":
    fill |= rows < height // 2
  elif mask == "bottom":
    fill |= rows >= height // 2
  elif mask == "center":
    fill |= (abs(2 * rows - height + 1) < height // 2) & (abs(2 * cols - width + 1) < width // 2)
  elif os.path.isfile(mask):
    fill = images.load_mask(mask, height, width)
  else:
    raise ValueError(f"--mask {mask!r} is neither a file nor one of {', '.join(MASK_PRESETS)}")
  if not fill.any():
    raise ValueError(f"--mask {mask!r} leaves nothing to generate")
  return (~fill).astype(np.float32)[..., None]


def latent_keep(keep: np.ndarray, factor: int) -> np.ndarray:
  """The mask [H/f, W/f, 1] of a latent run whose autoencoder downsamples by f = `factor`: a latent
  cell is kept only where all f x f pixels of its patch are, so that no generated pixel is decoded
  from a cell held to the input.

  Raises:
    ValueError: `keep` keeps pixels but no whole patch, so nothing of the input would guide the
      generation.
  """
  height, width, _ = keep.shape
  cells = keep.reshape(height // factor, factor, width // factor, factor, 1).min(axis=(1, 3))
  if keep.any() and not cells.any():
    raise ValueError(
      f"the mask keeps no whole {factor}x{factor} patch of pixels; a latent run keeps a latent "
      "cell of the input only where all its pixels are kept"
    )
  return cells


def model_keep(run: LoadedRun, keep: np.ndarray) -> np.ndarray:
  """The mask `keep` [H, W, 1] of the images in the model's space: as it is, or a latent run's."""
  if run.latents is None:
    return keep
  return latent_keep(keep, run.latents.vae.factor)


def _denoiser(run: LoadedRun, params, batch: int, label: int | None, guidance: float):
  """The run's model; with a label (conditional runs), that class for all `batch` examples under
  classifier-free guidance of scale `guidance`; without one, the null class."""
  labels = None if label is None else jnp.full((batch,), label, jnp.int32)
  return models.denoiser(run.model, params, run.kind, labels=labels, guidance_scale=guidance)


def sdedit_rows(
  run: LoadedRun,
  x: np.ndarray,
  spec: SamplerSpec,
  strength: float,
  variants: int,
  seed: int,
  label: int | None = None,
  guidance: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
  """SDEdit of every input `variants` times, towards class `label` for a conditional run.

  Returns:
    (rows [N, 2 + variants, H, W, C]: the input, its noised x_t0 and the edits; edits
    [N * variants, H, W, C]). A latent run's x_t0 is its noised latent decoded, the state the
    edit starts from as the decoder shows it.
  """
  repeated = jnp.asarray(np.repeat(run.to_examples(x), variants, axis=0))

  @jax.jit
  def run_edit(params, key):
    # A trajectory recorded every S steps holds the start state, x_t0, and the last.
    every = len(grid(spec, run.sched))
    result = sdedit.sdedit(
      _denoiser(run, params, len(repeated), label, guidance),
      run.sched,
      repeated,
      key,
      spec,
      strength=strength,
      trajectory_every=every,
    )
    return result.x, result.trajectory[0]

  edits, noised = jax.device_get(run_edit(run.params, jax.random.key(seed)))
  n = len(x)
  edits = run.to_images(np.asarray(edits))
  noised_first = run.to_images(np.asarray(noised)[::variants])[:, None]
  rows = np.concatenate(
    [x[:, None], noised_first, edits.reshape(n, variants, *x.shape[1:])], axis=1
  )
  return rows, edits


def inpaint_rows(
  run: LoadedRun,
  x: np.ndarray,
  keep: np.ndarray,
  spec: SamplerSpec,
  variants: int,
  seed: int,
  *,
  resample: int,
  jump_length: int,
  label: int | None = None,
  guidance: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
  """Inpainting of every input `variants` times, as class `label` for a conditional run.

  `keep` [H, W, 1] is 1 where the images are kept. A latent run inpaints its latents under
  `model_keep`'s mask; every result then takes the kept pixels from its input exactly.

  Returns:
    (rows [N, 2 + variants, H, W, C]: the input, the kept part (the rest grey) and the results;
    results [N * variants, H, W, C]).
  """
  mask = model_keep(run, keep)
  repeated_x = np.repeat(x, variants, axis=0)
  repeated = jnp.asarray(np.repeat(run.to_examples(x), variants, axis=0))

  @jax.jit
  def run_edit(params, key):
    result = inpainting.inpaint(
      _denoiser(run, params, len(repeated), label, guidance),
      run.sched,
      repeated,
      jnp.asarray(mask),
      key,
      spec,
      jump_length=jump_length,
      resample=resample,
    )
    return result.x

  results = run.to_images(np.asarray(jax.device_get(run_edit(run.params, jax.random.key(seed)))))
  # A decoder does not reproduce the kept pixels exactly; an image run's results hold them already.
  results = keep * repeated_x + (1.0 - keep) * results
  n = len(x)
  kept = x * keep  # 0 is mid-grey in [-1, 1]
  rows = np.concatenate(
    [x[:, None], kept[:, None], results.reshape(n, variants, *x.shape[1:])], axis=1
  )
  return rows, results


def interpolation_frames(
  run: LoadedRun,
  x: np.ndarray,
  spec: SamplerSpec,
  method: str,
  num_frames: int,
  strength: float,
  seed: int,
) -> np.ndarray:
  """Frames [F, H, W, C] from x[0] to x[1] (`interpolation.stochastic` or `deterministic`); a
  latent run interpolates the inputs' latents and decodes the frames."""
  if len(x) != 2:
    raise ValueError(f"interpolate takes exactly two images, got {len(x)}")
  z = jnp.asarray(run.to_examples(x))
  x_a, x_b = z[:1], z[1:]

  @jax.jit
  def run_frames(params, key):
    model = _denoiser(run, params, 1, None, 0.0)
    if method == "stochastic":
      return interpolation.stochastic(
        model, run.sched, x_a, x_b, key, spec, num_frames=num_frames, strength=strength
      )
    return interpolation.deterministic(model, run.sched, x_a, x_b, spec, num_frames=num_frames)

  return run.to_images(
    np.asarray(jax.device_get(run_frames(run.params, jax.random.key(seed))))[:, 0]
  )


def rows_picture(rows: np.ndarray, titles: list[str]) -> np.ndarray:
  """A grid of rows [N, K, H, W, C] in [-1, 1], each column under its title; RGB uint8."""
  n, k = rows.shape[:2]
  columns = []
  for j in range(k):
    column = images.preview_picture(rows[:, j], ncols=1)
    columns.append(figures.titled(column, titles[j] if j < len(titles) else ""))
  return figures.strip(columns, gap=0)
