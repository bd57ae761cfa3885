"""Bits per dimension of a loaded run over a dataset, by the variational bound or the ODE."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from diffusion_jax import data, models
from diffusion_jax.evaluation.run_loading import LoadedRun
from diffusion_jax.likelihood import ode as likelihood_ode
from diffusion_jax.likelihood import vlb as likelihood_vlb

_MEANINGS = {
  "discretized": "upper bound on -log2 P(x0) per dimension of the 8-bit data",
  "gaussian": "upper bound on the -log2 density per dimension, in the data's units",
}


def vlb_summary(
  run: LoadedRun, ds: data.Dataset, batch_size: int, num_examples: int, seed: int
) -> tuple[likelihood_vlb.VLBSummary, dict]:
  """The bound's summary over the split, and the settings it was computed with: the run's own
  sampling variance and x0 clipping, the discretized decoder for images, Gaussian for vectors."""
  decoder = "discretized" if ds.is_image else "gaussian"
  sampling = run.config.sampling
  kind = run.kind
  settings = dict(
    # As the run samples: its variance, and x0 clipped when the config says so (default: images).
    variance=sampling.variance or ("learned" if kind.learned_variance else "fixedlarge"),
    clip_x0=ds.is_image if sampling.clip_x0 is None else sampling.clip_x0,
  )
  summary = likelihood_vlb.evaluate_vlb(
    functools.partial(models.denoiser, run.model, kind=kind),
    run.params,
    run.sched,
    ds.ordered_batches(batch_size),
    jax.random.key(seed),
    decoder=decoder,
    num_examples=num_examples,
    **settings,
  )
  return summary, dict(decoder=decoder, **settings)


def vlb(run: LoadedRun, ds: data.Dataset, batch_size: int, num_examples: int, seed: int) -> dict:
  """The variational bound: discretized decoder for images, Gaussian (a density) for vectors."""
  summary, settings = vlb_summary(run, ds, batch_size, num_examples, seed)
  fields = dict(
    dataclasses.asdict(summary),
    terms_bpd=summary.terms_bpd.tolist(),
    x0_mse=summary.x0_mse.tolist(),
  )
  return dict(meaning=_MEANINGS[settings["decoder"]], **settings, **fields)


def ode(run: LoadedRun, ds: data.Dataset, batch_size: int, num_examples: int, seed: int) -> dict:
  """The probability-flow ODE likelihood: dequantized bits/dim for images (Hutchinson trace), the
  exact continuous density for vectors (exact trace); adaptive solver at its default tolerances."""
  denoiser_of = lambda params: models.denoiser(run.model, params, run.kind)  # noqa: E731
  if ds.is_image:
    fn = lambda p, x, k: likelihood_ode.image_bits_per_dim(  # noqa: E731
      denoiser_of(p), run.sched, jnp.round((x + 1) * 127.5), k
    )
  else:

    def fn(p, x, k):
      log_p, nfe = likelihood_ode.log_likelihood(
        denoiser_of(p), run.sched, x, k, divergence="exact"
      )
      return likelihood_ode.bits_per_dim(log_p, x.shape[1]), nfe

  fn = jax.jit(fn)
  bpd, evals, seen = [], 0, 0
  with tqdm.tqdm(total=num_examples, desc="ode likelihood", unit="example") as bar:
    for i, x in enumerate(ds.ordered_batches(batch_size)):
      x = x[: num_examples - seen]
      values, nfe = fn(run.params, x, jax.random.fold_in(jax.random.key(seed), i))
      bpd.append(np.asarray(values))
      evals += int(nfe) * len(x)
      seen += len(x)
      bar.update(len(x))
      if seen >= num_examples:
        break
  bpd = np.concatenate(bpd)
  meaning = "dequantized -log2 density per dimension of the 8-bit data (upper bound on -log2 P(x0))"
  return dict(
    meaning=meaning if ds.is_image else "-log2 density per dimension, in the data's units",
    total_bpd=float(bpd.mean()),
    total_bpd_stderr=float(bpd.std(ddof=1) / np.sqrt(len(bpd))) if len(bpd) > 1 else 0.0,
    num_examples=len(bpd),
    num_network_evals=evals,
  )


# Each returns JSON fields: meaning, total_bpd(_stderr), num_examples, num_network_evals, ...
METHODS = {"vlb": vlb, "ode": ode}


def evaluate_split(
  run: LoadedRun,
  method: str,
  split: str,
  batch_size: int,
  num_examples: int | None = None,
  seed: int = 0,
) -> dict:
  """Bits/dim of `run` on the first num_examples (default all) of a split of its dataset.

  Returns:
    the JSON fields of `METHODS[method]` plus method, step, split and seed.
  """
  if method not in METHODS:
    raise ValueError(f"unknown bits/dim method {method!r}; choose one of {', '.join(METHODS)}")
  if num_examples is not None and num_examples < 1:
    raise ValueError(f"the number of examples must be >= 1, got {num_examples}")
  data_config = data.split_config(run.config.data, split)
  # Every process reads the whole split: the bound splits each batch over the devices of all
  # processes; the ODE runs each whole batch on every device (its params are replicated).
  ds = data.create_dataset(
    data_config, batch_size, run.config.seed, process_index=0, process_count=1
  )
  num_examples = min(num_examples or ds.num_examples, ds.num_examples)
  result = dict(method=method, step=run.step, split=split, seed=seed)
  result.update(METHODS[method](run, ds, batch_size, num_examples, seed))
  return result
