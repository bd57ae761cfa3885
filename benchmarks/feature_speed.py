"""Throughput of the FID Inception network as evaluate.py runs it, and the time for 50,000 images.

python benchmarks/feature_speed.py --image_size=32 --batch_size=256 --num_batches=8
  [--inception_weights=pt_inception-2015-12-05-6726825d.pth]

Without weights it uses a random initialisation, which costs the same compute. Images are random
uint8 of the given size (resized to 299 inside the network, as for real samples); batches are
sharded over all devices by `feature_nets.compute_features`. Together with benchmark.py's time for
a sampling chain this gives the time to generate and score 50,000 samples.
"""

import time

import jax
import numpy as np
from absl import app, flags

from diffusion_jax import sharding
from diffusion_jax.metrics import feature_nets, inception

_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Height and width of the input images.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Images per batch.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 8, "Timed batches (after one to compile).")
_WEIGHTS = flags.DEFINE_string("inception_weights", "", "pytorch-fid weights (default: random).")


def main(argv):
  del argv
  if _WEIGHTS.value:
    net = feature_nets.create_feature_net("inception", inception_weights=_WEIGHTS.value)
  else:
    x = np.zeros((1, inception.INPUT_SIZE, inception.INPUT_SIZE, 3), np.float32)
    variables = jax.jit(inception.InceptionV3().init)(jax.random.key(0), x)
    apply = jax.tree_util.Partial(inception.inception_features, variables)
    net = feature_nets.FeatureNet("inception_random", apply, feature_dim=2048, num_classes=1008)
  mesh = sharding.data_mesh()
  size, batch = _IMAGE_SIZE.value, _BATCH_SIZE.value
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)

  start = time.perf_counter()
  feature_nets.compute_features(net, [images], mesh=mesh)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  feature_nets.compute_features(net, [images] * _NUM_BATCHES.value, mesh=mesh)
  per_image = (time.perf_counter() - start) / (batch * _NUM_BATCHES.value)

  device = f"{jax.devices()[0].platform} x{mesh.size}"
  print("| device | image size | batch | compile s | images/s | s for 50,000 images |")
  print("|---|---|---|---|---|---|")
  print(
    f"| {device} | {size} | {batch} | {compile_s:.1f} | {1 / per_image:.1f} "
    f"| {50_000 * per_image:.0f} |"
  )


if __name__ == "__main__":
  app.run(main)
