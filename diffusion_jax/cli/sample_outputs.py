"""What sample.py does: draw samples from a loaded run and write pictures, arrays and animations."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import data, diffusion, figures, images, samplers, sharding
from diffusion_jax.evaluation.run_loading import LoadedRun
from diffusion_jax.samplers import generation, progressive

NUM_GIF_FRAMES = 50
MAX_GIF_IMAGES = 64
MAX_GIF_POINTS = 1000


def reference_points(run: LoadedRun) -> np.ndarray | None:
  """The 2D training points of a builtin toy run (cheap to rebuild), or None for image runs."""
  if len(run.example_shape) != 1 or run.config.data.source != "builtin":
    return None
  ds = data.create_dataset(run.config.data, 1, run.config.seed, process_index=0, process_count=1)
  return ds.data_samples(ds.num_examples)


def forward_times(num_timesteps: int, num_frames: int) -> np.ndarray:
  """num_frames timesteps from 0 to T - 1, evenly spaced: the forward process's frames."""
  return np.linspace(0, num_timesteps - 1, num_frames).round().astype(np.int32)


def forward_frames(run: LoadedRun, x0: np.ndarray, times: np.ndarray, key) -> np.ndarray:
  """x_t ~ q(x_t | x0) at each of `times`, one noise draw per timestep; [F, *x0.shape]."""
  x0 = jnp.asarray(x0)
  frames = []
  for t in times:
    noise = jax.random.normal(jax.random.fold_in(key, int(t)), x0.shape)
    frames.append(diffusion.q_sample(run.sched, x0, jnp.full((x0.shape[0],), t), noise))
  return np.stack(jax.device_get(frames))


def write_reverse_gif(
  run: LoadedRun,
  path: str,
  spec: samplers.SamplerSpec,
  key,
  mesh,
  *,
  labels: np.ndarray | None = None,
  ncols: int | None = None,
  guidance_scale: float = 0.0,
  classifier: tuple | None = None,
  classifier_scale: float = 1.0,
) -> None:
  """Animates the reverse process of `spec` (ancestral for `ode_adaptive`, which has no fixed
  steps), the time index on every frame; for 2D data the forward process plays first (data ->
  noise).

  With labels, the chains draw as many as an animation holds, guided as `sample_and_save` says:
  for images the first whole rows of ncols (the layout of samples.png), for points every k-th.
  """
  reference = reference_points(run)
  num = MAX_GIF_IMAGES if reference is None else min(MAX_GIF_POINTS, len(reference))
  if labels is not None and reference is None:  # whole rows of the grid samples.png shows
    labels = labels[: ncols * max(1, num // ncols) if ncols else num]
  elif labels is not None:  # every k-th point's label, so that every class shows
    labels = labels[:: -(-len(labels) // num)]
  num = num if labels is None else len(labels)
  padded = -(-num // mesh.size) * mesh.size
  if spec.name == "ode_adaptive":
    spec = samplers.SamplerSpec("ancestral", clip_x0=spec.clip_x0)
  times = samplers.grid(spec, run.sched)
  every = max(1, (len(times) - 1) // NUM_GIF_FRAMES)
  sample_fn = generation.make_sample_fn(
    run.model,
    run.kind,
    run.sched,
    (padded, *run.example_shape),
    mesh,
    spec,
    trajectory_every=every,
    guidance_scale=guidance_scale,
    classifier=classifier,
    classifier_scale=classifier_scale,
  )
  if labels is not None:
    labels = np.pad(labels, (0, padded - num), mode="edge")
  _, trajectory = sample_fn(run.params, key, labels)
  trajectory = np.stack([run.to_images(frame) for frame in sharding.to_host(trajectory)[:, :num]])
  titles = [f"reverse t={t:.0f}" for t in progressive.frame_times(times, every)]
  if reference is None:
    pictures = [images.preview_picture(np.clip(f, -1, 1), ncols=ncols) for f in trajectory]
    frames = [figures.titled(p, title) for p, title in zip(pictures, titles, strict=True)]
  else:
    x0 = reference[:num]
    ts = forward_times(run.sched.num_timesteps, len(trajectory))
    path_frames = np.concatenate([forward_frames(run, x0, ts, key), trajectory])
    titles = [f"forward t={t}" for t in ts] + titles
    lims = images.points_limits(np.concatenate([x0, trajectory[-1]]))
    frames = [
      images.scatter_image(f, lims=lims, title=title)
      for f, title in zip(path_frames, titles, strict=True)
    ]
  if jax.process_index() == 0:
    images.save_gif(path, frames + [frames[-1]] * 10)  # hold the last frame


def class_labels(
  run: LoadedRun,
  labels: list[str] | None,
  per_class: int | None,
  num_samples: int,
  classes_of: tuple[int, tuple[str, ...]] | None = None,
) -> np.ndarray | None:
  """The class of each sample to draw: the listed labels (indices or class names), per_class of
  every class in turn (one grid row per class), or all classes in turn; None for an
  unconditional run, which refuses labels. classes_of = (number, names) of a guiding classifier's
  classes replaces the run's."""
  k, names = classes_of or (run.num_classes, run.class_names)
  if not k:
    if labels or per_class:
      raise ValueError("this run is unconditional (model.num_classes=0); it takes no labels")
    return None
  if labels and per_class:
    raise ValueError("give --labels or --per_class, not both")
  if per_class:
    return np.repeat(np.arange(k, dtype=np.int32), per_class)
  if not labels:
    return np.arange(num_samples, dtype=np.int32) % k
  index = {name: i for i, name in enumerate(names)}
  out = []
  for label in labels:
    if label in index:
      out.append(index[label])
    elif label.lstrip("-").isdigit() and 0 <= int(label) < k:
      out.append(int(label))
    else:
      listed = f" or one of {', '.join(names)}" if names else ""
      raise ValueError(f"unknown class label {label!r}; give 0..{k - 1}{listed}")
  return np.array(out, np.int32)


def sample_and_save(
  run: LoadedRun,
  out_dir: str,
  num_samples: int,
  batch_size: int,
  seed: int,
  spec: samplers.SamplerSpec,
  gif: bool,
  *,
  labels: np.ndarray | None = None,
  guidance_scale: float = 0.0,
  ncols: int | None = None,
  classifier: tuple | None = None,
  classifier_scale: float = 1.0,
) -> tuple[list[str], float]:
  """Writes samples.npz (uint8 NHWC images, or float32 points; with labels also `labels`),
  samples.png and optionally reverse.gif (the sampler's chain, drawn as the samples are) into
  out_dir.

  A conditional run draws sample i of class labels[i] (num_samples is then len(labels)) with
  classifier-free guidance of scale guidance_scale, and with a (classifier module, params) also
  classifier guidance of scale classifier_scale; ncols sets the grid's images per row.

  Returns:
    (the paths written, network evaluations per sample).
  """
  mesh = sharding.data_mesh()
  key, gif_key = jax.random.split(jax.random.key(seed))
  if labels is not None:
    num_samples = len(labels)
  samples, nfe = generation.generate(
    run.model,
    run.kind,
    run.params,
    run.sched,
    run.example_shape,
    num_samples,
    batch_size,
    key,
    mesh,
    spec,
    labels=labels,
    guidance_scale=guidance_scale,
    classifier=classifier,
    classifier_scale=classifier_scale,
  )
  samples = run.to_images(samples)
  paths = [os.path.join(out_dir, name) for name in ("samples.npz", "samples.png")]
  if gif:
    paths.append(os.path.join(out_dir, "reverse.gif"))
    write_reverse_gif(
      run,
      paths[2],
      spec,
      gif_key,
      mesh,
      labels=labels,
      ncols=ncols,
      guidance_scale=guidance_scale,
      classifier=classifier,
      classifier_scale=classifier_scale,
    )
  if jax.process_index() != 0:
    return [], nfe
  os.makedirs(out_dir, exist_ok=True)
  reference = reference_points(run)
  extra = {} if labels is None else {"labels": labels}
  if reference is None and labels is None:
    images.save_samples_npz(paths[0], images.to_uint8(samples))
    images.save_preview(paths[1], samples[:256])
  elif reference is None:
    np.savez(paths[0], arr_0=images.to_uint8(samples), **extra)
    images.save_preview(paths[1], samples[:256], ncols=ncols)
  else:
    np.savez(paths[0], arr_0=samples, **extra)
    images.save_preview(paths[1], samples, reference)
  return paths, nfe
