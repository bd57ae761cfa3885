"""Reconstruction error of an autoencoder run over its data (a train.py run of autoencoder_kl).

python benchmarks/autoencoder_reconstruction.py --workdir=runs/digits_autoencoder

Every image of the run's data split is encoded and decoded through the posterior mean with the
EMA params; the table gives the mean absolute and squared error per pixel in [-1, 1] units, the
PSNR over that range (peak-to-peak 2), and the latents' standard deviation, whose inverse is the
scale factor LDM gives latent diffusion.
"""

import jax
import numpy as np
from absl import app, flags

from diffusion_jax import data, sharding
from diffusion_jax.cli import logs
from diffusion_jax.training import autoencoder_run

_WORKDIR = flags.DEFINE_string("workdir", None, "An autoencoder run.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Images per call.", lower_bound=1)
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  logs.quiet_library_logs()
  vae, params, config = autoencoder_run.load_autoencoder(_WORKDIR.value)
  replicated = sharding.replicated(sharding.data_mesh())
  encode = jax.jit(
    lambda p, x: vae.apply({"params": p}, x, method="encode")[0], out_shardings=replicated
  )
  decode = jax.jit(lambda p, z: vae.apply({"params": p}, z, method="decode"))
  ds = data.create_dataset(config.data, 1, config.seed, process_index=0, process_count=1)
  abs_err, sq_err, latents = [], [], []
  for x in ds.ordered_batches(_BATCH.value):
    z = encode(params, x)
    diff = np.asarray(decode(params, z), np.float64) - x
    abs_err.append(np.abs(diff).reshape(len(x), -1).mean(axis=1))
    sq_err.append(np.square(diff).reshape(len(x), -1).mean(axis=1))
    latents.append(np.asarray(z, np.float64).reshape(len(x), -1))
  mae, mse = np.concatenate(abs_err).mean(), np.concatenate(sq_err).mean()
  z_std = np.concatenate(latents).std()
  print(f"{ds.num_examples} images {ds.example_shape}, latents {z.shape[1:]}")
  print("| MAE per pixel | MSE per pixel | PSNR dB | latent std | 1 / std |")
  print("| --- | --- | --- | --- | --- |")
  print(f"| {mae:.4f} | {mse:.5f} | {10 * np.log10(4 / mse):.2f} | {z_std:.3f} | {1 / z_std:.3f} |")


if __name__ == "__main__":
  app.run(main)
