"""What analyze.py does: the DDPM paper's analyses of a loaded run as pictures and JSON —
progressive generation (Fig. 6) with the forward and reverse chains, and the rate-distortion curve
of progressive coding (Fig. 5)."""

import jax
import numpy as np

from diffusion_jax import data, figures, images, models
from diffusion_jax.cli import sample_outputs
from diffusion_jax.evaluation import bits_per_dim
from diffusion_jax.evaluation.run_loading import LoadedRun
from diffusion_jax.likelihood import rate_distortion
from diffusion_jax.samplers import SamplerSpec, grid, progressive


def _panels(run: LoadedRun, frames: np.ndarray, titles: list[str], lims=None) -> np.ndarray:
  """One titled panel per frame [F, N, ...], side by side: a column of images, or a scatter."""
  if len(run.data_shape) == 1:
    pictures = [
      images.scatter_image(f, size=256, lims=lims, title=t)
      for f, t in zip(frames, titles, strict=True)
    ]
  else:
    pictures = [
      figures.titled(images.preview_picture(np.clip(f, -1, 1), ncols=1), t)
      for f, t in zip(frames, titles, strict=True)
    ]
  return figures.strip(pictures)


def _as_images(run: LoadedRun, frames) -> np.ndarray:
  """The model's frames [F, N, *example_shape] as data [F, N, *data_shape] (a latent run's
  decoded)."""
  return np.stack([run.to_images(np.asarray(frame)) for frame in frames])


def progressive_pictures(
  run: LoadedRun, spec: SamplerSpec, num_samples: int, num_frames: int, seed: int
) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
  """forward.png (q(x_t | x0) of training data), reverse.png (x_t along a chain), progressive.png
  (its x0_hat), each about num_frames titled panels; and GIF frames of forward then reverse.

  A latent run's chains and forward process run on latents (the training data's encoded) and show
  decoded."""
  key = jax.random.key(seed)
  ds = data.create_dataset(run.config.data, 1, run.config.seed, process_index=0, process_count=1)
  num_samples = min(num_samples, ds.num_examples)  # as many chains as data shown going forward

  @jax.jit
  def run_chain(params):
    model = models.denoiser(run.model, params, run.kind)
    shape = (num_samples, *run.example_shape)
    return progressive.progressive_generation(
      model, run.sched, shape, key, spec, num_frames=num_frames
    )[1:]

  grid_times = grid(spec, run.sched)
  times = progressive.frame_times(
    grid_times, progressive.record_every(len(grid_times) - 1, num_frames)
  )
  x_t, x0_hat = (_as_images(run, a) for a in jax.device_get(run_chain(run.params)))
  x0 = ds.data_samples(num_samples)
  forward_ts = sample_outputs.forward_times(run.sched.num_timesteps, len(times))
  forward = _as_images(
    run, sample_outputs.forward_frames(run, run.to_examples(x0), forward_ts, key)
  )
  lims = images.points_limits(np.concatenate([x0, x_t[-1]])) if x0.ndim == 2 else None
  reverse_titles = [f"t={t:.0f}" if t >= 0 else "clean" for t in times]
  pictures = {
    "forward": _panels(run, forward, [f"t={t}" for t in forward_ts], lims),
    "reverse": _panels(run, x_t, reverse_titles, lims),
    "progressive": _panels(run, x0_hat, reverse_titles, lims),
  }
  gif = [
    _panels(run, f[None], [title], lims)
    for f, title in zip(
      np.concatenate([forward, x_t]),
      [f"forward t={t}" for t in forward_ts] + [f"reverse {t}" for t in reverse_titles],
      strict=True,
    )
  ]
  return pictures, gif


def rate_distortion_of(
  run: LoadedRun, split: str, batch_size: int, num_examples: int | None, seed: int
) -> tuple[dict, np.ndarray]:
  """The curve on a split (as JSON, with the bound's settings) and its picture: distortion and
  rate against reverse steps, and distortion against rate."""
  ds = data.create_dataset(
    data.split_config(run.config.data, split), 1, run.config.seed, process_index=0, process_count=1
  )
  summary, settings = bits_per_dim.vlb_summary(run, ds, batch_size, num_examples, seed)
  curve = rate_distortion.rate_distortion(summary)
  result = dict(
    split=split, step=run.step, num_examples=summary.num_examples, **settings, **curve.as_json()
  )
  steps = curve.reverse_steps
  picture = figures.strip(
    [
      figures.line_chart(
        steps, curve.distortion_rmse, title="Distortion", x_label="reverse steps", y_label="RMSE"
      ),
      figures.line_chart(
        steps, curve.rate_bpd, title="Rate", x_label="reverse steps", y_label="bits/dim"
      ),
      figures.line_chart(
        curve.rate_bpd,
        curve.distortion_rmse,
        title="Rate-distortion",
        x_label="rate (bits/dim)",
        y_label="RMSE",
      ),
    ]
  )
  return result, picture
