"""Feature networks for sample metrics, behind one interface, and sharded feature extraction.

A FeatureNet maps uint8 images to (features, logits): features feed FID and KID, logits the
Inception Score and the accuracy on a conditional run's labels. "inception" is the FID
Inception-v3 (pool3 features, 1008 logits, which an ImageNet label map names by synset); "digits"
is a small classifier of the builtin 8x8 digits that needs no download (digits_classifier.py).
"""

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from diffusion_jax import sharding

FEATURE_NETS = ("inception", "digits")
INCEPTION_WEIGHTS_URL = (
  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
  "pt_inception-2015-12-05-6726825d.pth"
)


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """A network that turns images into features and class logits.

  `apply` should bind its parameters with jax.tree_util.Partial: compute_features then passes them
  to jit as arguments, where a closure or functools.partial would bake them into the compiled
  program as constants (slow to compile for Inception's 24M parameters).
  """

  name: str  # names cache files: "inception_v3_fid", "digits_classifier_<weights fingerprint>"
  apply: Callable  # jittable: uint8 images [B, H, W, C] -> (features [B, D], logits [B, K]) f32
  feature_dim: int
  num_classes: int
  # The class each logit scores ('' for none): Inception's ImageNet synsets, given a label map.
  # Empty: the logits are the data's own classes in order (the digits classifier on digits).
  class_names: tuple[str, ...] = ()


def create_feature_net(
  name: str, *, inception_weights: str = "", inception_label_map: str = "", cache_dir: str = ""
) -> FeatureNet:
  """Builds a feature network by name.

  Args:
    name: "inception" (FID Inception-v3; needs inception_weights) or "digits" (trained on first
      use and cached).
    inception_weights: path of pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID weights).
    inception_label_map: optional path of imagenet_2012_challenge_label_map_proto.pbtxt (in
      inception-2015-12-05.tgz), which names Inception's logits by ImageNet synset
      (`imagenet_labels`).
    cache_dir: where the digits classifier is cached; default $DIFFUSION_JAX_CACHE or
      ~/.cache/diffusion_jax.

  Returns:
    The FeatureNet.
  """
  if name == "inception":
    if not inception_weights or not os.path.isfile(inception_weights):
      found = f" ({inception_weights!r} is not a file)" if inception_weights else ""
      raise ValueError(
        f"the inception feature net needs the FID Inception weights{found}: download "
        f"{INCEPTION_WEIGHTS_URL} and pass its path as inception_weights "
        "(--inception_weights / config.eval.inception_weights)"
      )
    # Imported here: the Inception port is only needed when this net is asked for.
    from diffusion_jax.metrics import imagenet_labels, inception

    class_names = ()
    if inception_label_map:  # read first: a bad path fails before the weights load
      class_names = imagenet_labels.read_label_map(inception_label_map, inception.NUM_LOGITS)
    params = inception.load_inception_params(inception_weights)
    apply = jax.tree_util.Partial(inception.inception_features, params)
    return FeatureNet(
      "inception_v3_fid",
      apply,
      feature_dim=inception.POOL3_DIM,
      num_classes=inception.NUM_LOGITS,
      class_names=class_names,
    )
  if name == "digits":
    from diffusion_jax.metrics import digits_classifier

    params = digits_classifier.load_or_train(cache_dir)
    if jax.process_count() > 1:
      # Hosts with other CPUs may train slightly different weights; all must apply the same ones.
      params = multihost_utils.broadcast_one_to_all(params)
    apply = jax.tree_util.Partial(digits_classifier.features_and_logits, params)
    # The weights' fingerprint in the name keeps cached reference statistics tied to them.
    return FeatureNet(
      f"digits_classifier_{digits_classifier.fingerprint(params)}",
      apply,
      feature_dim=digits_classifier.FEATURE_DIM,
      num_classes=digits_classifier.NUM_CLASSES,
    )
  raise ValueError(f"unknown feature net {name!r}; valid: {', '.join(FEATURE_NETS)}")


@functools.partial(jax.jit, static_argnames="mesh")
def _apply(apply: jax.tree_util.Partial, images_BxHxWxC: jax.Array, mesh: Mesh):
  # Module-level so that one compilation per net function, batch shape and mesh serves every call.
  outputs = apply(images_BxHxWxC)
  return jax.lax.with_sharding_constraint(outputs, sharding.batch_sharding(mesh))


def iterate_features(
  net: FeatureNet,
  image_batches: Iterable[np.ndarray],
  *,
  mesh: Mesh | None = None,
  progress: str | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Runs the net over batches of images, yielding each batch's outputs as it is done.

  Each batch is split over the mesh's 'data' axis. Batches are padded (by repeating their last
  image) up to the first batch's size rounded up to a multiple of the device count, so one
  compiled program serves all of them; the padding is dropped from the outputs. With several
  processes, every process passes the same images, its devices run their share of each batch, and
  every process gets all the outputs back.

  Args:
    net: the feature network.
    image_batches: uint8 arrays [B, H, W, C] with values 0..255 (as sample.py writes them).
    mesh: a ('data',) mesh; default sharding.data_mesh().
    progress: shows a progress bar with this description when given.

  Yields:
    (features float32 [B, D], logits float32 [B, K]) on the host, one pair per batch.
  """
  mesh = mesh or sharding.data_mesh()
  apply = (
    net.apply if isinstance(net.apply, jax.tree_util.Partial) else jax.tree_util.Partial(net.apply)
  )
  apply = jax.device_put(apply, sharding.replicated(mesh))
  padded_size = 0
  with tqdm.tqdm(desc=progress, unit="image", disable=progress is None) as bar:
    for images in image_batches:
      images = np.asarray(images)
      if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
          f"feature nets take uint8 images [B, H, W, C] in 0..255, got {images.dtype} "
          f"{images.shape}; map floats in [-1, 1] with diffusion_jax.images.to_uint8"
        )
      size = len(images)
      if size > padded_size:
        padded_size = -(-size // mesh.size) * mesh.size
      padded = np.concatenate([images, np.repeat(images[-1:], padded_size - size, axis=0)])
      outputs = _apply(apply, sharding.shard_global_batch(padded, mesh), mesh)
      features, logits = sharding.to_host(outputs)
      yield (np.asarray(features, np.float32)[:size], np.asarray(logits, np.float32)[:size])
      bar.update(size)


def compute_features(
  net: FeatureNet,
  image_batches: Iterable[np.ndarray],
  *,
  mesh: Mesh | None = None,
  progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Features and logits of all images; see iterate_features for the arguments.

  Returns:
    (features float32 [N, D], logits float32 [N, K]) on the host, N the total number of images.
  """
  outputs = list(iterate_features(net, image_batches, mesh=mesh, progress=progress))
  if not outputs:
    raise ValueError("compute_features got no image batches")
  features, logits = zip(*outputs, strict=True)
  return np.concatenate(features), np.concatenate(logits)
