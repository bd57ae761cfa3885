"""Our converted AutoencoderKL against diffusers' at Stable Diffusion's VAE layout, random weights.

python benchmarks/autoencoder_vs_diffusers.py --sizes=32,64

Needs torch and diffusers. For each image size, a diffusers AutoencoderKL with the layout of
stabilityai/sd-vae-ft-mse (block_out_channels (128, 256, 512, 512), 2 ResNet blocks per level,
4 latent channels, f = 8; 83.7M parameters) gets random weights (std 1/sqrt(fan_in), the same
draw as tests/fixtures/make_autoencoder_fixture.py), is saved as a diffusers folder and
converted by `pretrained.diffusers_autoencoder`; both encode the same images (uniform in [-1, 1])
and decode the same latents (N(0, I)). The table gives the largest absolute difference of the
posterior's mean and log-variance and of the decoded images, and the largest absolute value of
each for scale.
"""

import os
import sys
import tempfile

import jax
import numpy as np
from absl import app, flags

from diffusion_jax import models
from diffusion_jax.pretrained import diffusers_autoencoder

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests", "fixtures"))
import make_autoencoder_fixture as fixture  # noqa: E402

_SIZES = flags.DEFINE_list("sizes", ["32", "64"], "Image sizes (multiples of 8).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the weights and inputs.")


def main(argv):
  del argv
  config = fixture.STABLE_DIFFUSION
  model = fixture.random_autoencoder(config, _SEED.value)
  with tempfile.TemporaryDirectory() as folder:
    model.save_pretrained(folder)
    our_config, params = diffusers_autoencoder.load_diffusers_autoencoder(folder)
  vae = models.create_autoencoder(our_config)
  num_params = sum(p.size for p in jax.tree.leaves(params))
  print(f"AutoencoderKL, Stable Diffusion layout: {num_params:,} parameters, f = {vae.factor}")
  encode = jax.jit(lambda p, x: vae.apply({"params": p}, x, method="encode"))
  decode = jax.jit(lambda p, z: vae.apply({"params": p}, z, method="decode"))
  print("| input | output | max abs difference | max abs value |")
  print("| --- | --- | --- | --- |")
  for size in map(int, _SIZES.value):
    x, z = fixture.inputs(config, batch=1, size=size, seed=_SEED.value)
    want = fixture.diffusers_outputs(model, x, z)
    mean, logvar = encode(params, x)
    got = dict(mean=mean, logvar=logvar, decoded=decode(params, z))
    for name, value in got.items():
      diff = np.max(np.abs(np.asarray(value, np.float64) - want[name]))
      given = f"z {z.shape}" if name == "decoded" else f"x {x.shape}"
      print(f"| {given} | {name} | {diff:.2e} | {np.max(np.abs(want[name])):.3g} |")


if __name__ == "__main__":
  app.run(main)
