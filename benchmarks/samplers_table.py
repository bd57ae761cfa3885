"""Sampler comparison as a Markdown table: network calls, sample quality, wall time.

python benchmarks/samplers_table.py --workdir=runs/toy2d

Quality is the sliced 1-Wasserstein distance (256 random directions) between 5000 samples and 5000
reference points: for `oracle`, the exact eps* of the builtin 8-Gaussian mixture under the run's
schedule against fresh mixture draws; for `trained`, the toy2d run in --workdir against its data.
The `floor` row is the same distance between two independent reference sets.
"""

import time

import jax
import numpy as np
from absl import app, flags

from diffusion_jax import data, oracles, samplers, sharding
from diffusion_jax.cli import sample_outputs
from diffusion_jax.evaluation import run_loading
from diffusion_jax.samplers import generation

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained toy2d workdir.")
flags.mark_flag_as_required("workdir")

NUM = 5000
SPECS = [
  samplers.SamplerSpec("ancestral"),
  samplers.SamplerSpec("ancestral", steps=50),
  samplers.SamplerSpec("ddim", steps=50),
  samplers.SamplerSpec("ddim", steps=20),
  samplers.SamplerSpec("dpm_solver++", steps=25),
  samplers.SamplerSpec("dpm_solver++", steps=10),
  samplers.SamplerSpec("ode_euler", steps=100),
  samplers.SamplerSpec("ode_heun", steps=25),
  samplers.SamplerSpec("ode_adaptive", rtol=1e-3, atol=1e-3),
  samplers.SamplerSpec("sde"),
  samplers.SamplerSpec("sde", steps=100, corrector_steps=1, snr=0.1),
]


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, num_directions: int = 256) -> float:
  """Mean over random unit directions of the 1-D Wasserstein-1 distance of the projections."""
  theta = np.random.default_rng(0).normal(size=(a.shape[1], num_directions))
  theta /= np.linalg.norm(theta, axis=0)
  pa, pb = np.sort(a @ theta, axis=0), np.sort(b @ theta, axis=0)
  return float(np.abs(pa - pb).mean())


def _describe(spec: samplers.SamplerSpec) -> str:
  extra = f", {spec.corrector_steps} corrector" if spec.corrector_steps else ""
  return f"{spec.name} ({spec.steps or 'default'} steps{extra})"


def main(argv):
  del argv
  mesh = sharding.data_mesh()
  run = run_loading.load_run(_WORKDIR.value)
  sched = run.sched
  weights, means, covs = data.gaussian_mixture_params()
  mixture = oracles.GaussianMixture(
    weights=np.asarray(weights, np.float32),
    means=np.asarray(means, np.float32),
    variances=np.asarray(covs[:, 0, 0], np.float32),
  )
  truth = np.asarray(mixture.sample(jax.random.key(1), NUM))
  points = sample_outputs.reference_points(run)
  floor_oracle = sliced_wasserstein(truth, np.asarray(mixture.sample(jax.random.key(2), NUM)))
  floor_trained = sliced_wasserstein(points[: len(points) // 2], points[len(points) // 2 :])

  print(
    "| sampler | network calls (oracle / trained) | SW1 oracle | SW1 trained toy2d "
    "| CPU s (trained, 5000 samples) |"
  )
  print("|---|---|---|---|---|")
  print(f"| floor (two reference sets) | - | {floor_oracle:.4f} | {floor_trained:.4f} | - |")
  eps_oracle = oracles.eps_fn_for(mixture, sched)
  for spec in SPECS:
    x_oracle, nfe_oracle, _ = jax.jit(
      lambda k, s=spec: samplers.sample(eps_oracle, sched, (NUM, 2), k, s)
    )(jax.random.key(0))
    args = (run.model, run.kind, run.params, run.sched, run.example_shape, NUM, NUM)
    args = (*args, jax.random.key(0), mesh)
    generation.generate(*args, spec, progress=False)  # compile
    start = time.perf_counter()
    x_trained, nfe = generation.generate(*args, spec, progress=False)
    seconds = time.perf_counter() - start
    print(
      f"| {_describe(spec)} | {int(nfe_oracle)} / {nfe:g} "
      f"| {sliced_wasserstein(np.asarray(x_oracle), truth):.4f} "
      f"| {sliced_wasserstein(x_trained, points[:NUM]):.4f} | {seconds:.2f} |",
      flush=True,
    )


if __name__ == "__main__":
  app.run(main)
