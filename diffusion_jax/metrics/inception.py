"""Inception-v3 as the standard FID and Inception Score see it, in Flax.

The network is the TensorFlow graph of 2015-12-05 (`inception-2015-12-05.tgz`) that the original
FID and Inception Score code run, in the form pytorch-fid rebuilt it (`fid_inception_v3`):
torchvision's Inception3 with 1008 classes and no auxiliary head, whose Mixed_5b-5d, Mixed_6b-6e
and Mixed_7b blocks average-pool without counting padded zeros (as TensorFlow does) and whose last
block, Mixed_7c, max-pools in its pool branch (as that graph does). Every conv is followed by
inference-mode BatchNorm (epsilon 0.001) and a ReLU. The outputs are the 2048-d "pool3" features
(global average pool after Mixed_7c; FID compares their statistics) and the 1008 logits of the
final fully connected layer (the Inception Score uses their softmax).

Weights: nothing is downloaded by this library. Fetch pytorch-fid's port of the TensorFlow weights
once,

  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

and read it with `load_inception_params(path)`, which needs no PyTorch. The Flax module names
follow the torch ones (`Mixed_5b/branch1x1/conv/kernel` is `Mixed_5b.branch1x1.conv.weight`).

    variables = load_inception_params("pt_inception-2015-12-05-6726825d.pth")
    pool3_Bx2048, logits_Bx1008 = inception_features(variables, images_BxHxWxC_uint8)

Inputs are preprocessed as pytorch-fid's InceptionV3 does with resize_input=True and
normalize_input=True: uint8 -> x / 255, bilinear resize to 299x299 (torch's `F.interpolate(...,
mode="bilinear", align_corners=False)`, without antialiasing, also when shrinking), then 2x - 1.

Convs and the final layer run at `jax.lax.Precision.HIGHEST` by default: on GPUs and TPUs, JAX's
default precision may multiply float32 in TF32 or bfloat16, which would move the features away
from the float32 reference this port matches. Pass another precision to trade that for speed.
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.pretrained.weight_files import read_weights

INPUT_SIZE = 299  # the graph's input resolution; every image is resized to it
POOL3_DIM = 2048
NUM_LOGITS = 1008  # 1000 ImageNet classes and 8 unused ones, as in the TensorFlow graph
BN_EPSILON = 1e-3  # torchvision's BasicConv2d, and the TensorFlow graph's


class BasicConv2d(nn.Module):
  """Conv (no bias) -> inference BatchNorm -> ReLU, with torch's symmetric padding."""

  features: int
  kernel_size: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)  # (rows, columns) added on both sides, as torch's Conv2d
  precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(
      self.features,
      self.kernel_size,
      strides=self.stride,
      padding=((ph, ph), (pw, pw)),
      use_bias=False,
      precision=self.precision,
      name="conv",
    )(x_BxHxWxC)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3_same(x: jax.Array) -> jax.Array:
  # TensorFlow's average pool divides by the number of real (unpadded) pixels in the window.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nn.Module):
  """35x35 block: 1x1, 5x5, double 3x3 and pooled branches (Mixed_5b-5d)."""

  pool_features: int
  precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1x1 = conv(64, (1, 1), name="branch1x1")(x)
    b5x5 = conv(48, (1, 1), name="branch5x5_1")(x)
    b5x5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5x5)
    b3x3dbl = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3x3dbl = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3x3dbl)
    b3x3dbl = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3x3dbl)
    bpool = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1x1, b5x5, b3x3dbl, bpool], axis=-1)


class InceptionB(nn.Module):
  """Reduction 35x35 -> 17x17 (Mixed_6a)."""

  precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3x3 = conv(384, (3, 3), stride=2, name="branch3x3")(x)
    b3x3dbl = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3x3dbl = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3x3dbl)
    b3x3dbl = conv(96, (3, 3), stride=2, name="branch3x3dbl_3")(b3x3dbl)
    return jnp.concatenate([b3x3, b3x3dbl, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorized 7x7 convs (Mixed_6b-6e)."""

  channels_7x7: int
  precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    c7 = self.channels_7x7
    row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
    b1x1 = conv(192, (1, 1), name="branch1x1")(x)
    b7x7 = conv(c7, (1, 1), name="branch7x7_1")(x)
    b7x7 = conv(c7, **row, name="branch7x7_2")(b7x7)
    b7x7 = conv(192, **col, name="branch7x7_3")(b7x7)
    b7x7dbl = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
    b7x7dbl = conv(c7, **col, name="branch7x7dbl_2")(b7x7dbl)
    b7x7dbl = conv(c7, **row, name="branch7x7dbl_3")(b7x7dbl)
    b7x7dbl = conv(c7, **col, name="branch7x7dbl_4")(b7x7dbl)
    b7x7dbl = conv(192, **row, name="branch7x7dbl_5")(b7x7dbl)
    bpool = conv(192, (1, 1), name="branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1x1, b7x7, b7x7dbl, bpool], axis=-1)


class InceptionD(nn.Module):
  """Reduction 17x17 -> 8x8 (Mixed_7a)."""

  precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3x3 = conv(192, (1, 1), name="branch3x3_1")(x)
    b3x3 = conv(320, (3, 3), stride=2, name="branch3x3_2")(b3x3)
    b7x7x3 = conv(192, (1, 1), name="branch7x7x3_1")(x)
    b7x7x3 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7x7x3)
    b7x7x3 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7x7x3)
    b7x7x3 = conv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7x7x3)
    return jnp.concatenate([b3x3, b7x7x3, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with split 1x3/3x1 convs (Mixed_7b average-pools, Mixed_7c max-pools)."""

  max_pool: bool
  precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    row, col = dict(kernel_size=(1, 3), padding=(0, 1)), dict(kernel_size=(3, 1), padding=(1, 0))
    b1x1 = conv(320, (1, 1), name="branch1x1")(x)
    b3x3 = conv(384, (1, 1), name="branch3x3_1")(x)
    b3x3_a = conv(384, **row, name="branch3x3_2a")(b3x3)
    b3x3_b = conv(384, **col, name="branch3x3_2b")(b3x3)
    b3x3dbl = conv(448, (1, 1), name="branch3x3dbl_1")(x)
    b3x3dbl = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3x3dbl)
    b3x3dbl_a = conv(384, **row, name="branch3x3dbl_3a")(b3x3dbl)
    b3x3dbl_b = conv(384, **col, name="branch3x3dbl_3b")(b3x3dbl)
    pooled = _max_pool_3x3(x, stride=1) if self.max_pool else _avg_pool_3x3_same(x)
    bpool = conv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1x1, b3x3_a, b3x3_b, b3x3dbl_a, b3x3dbl_b, bpool], axis=-1)


class InceptionV3(nn.Module):
  """The FID Inception-v3 on preprocessed images; see `inception_features` for raw uint8 ones."""

  precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x_BxHxWx3: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Runs the network.

    Args:
      x_BxHxWx3: float32 images scaled to [-1, 1], normally 299x299 (at least 75x75).

    Returns:
      pool3_Bx2048: the global average pool of Mixed_7c.
      logits_Bx1008: the final fully connected layer applied to pool3.
    """
    conv = functools.partial(BasicConv2d, precision=self.precision)
    p = self.precision
    x = conv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x_BxHxWx3)  # 149x149
    x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)  # 147x147
    x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3(x, stride=2)  # 73x73
    x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)  # 71x71
    x = _max_pool_3x3(x, stride=2)  # 35x35
    x = InceptionA(32, precision=p, name="Mixed_5b")(x)
    x = InceptionA(64, precision=p, name="Mixed_5c")(x)
    x = InceptionA(64, precision=p, name="Mixed_5d")(x)
    x = InceptionB(precision=p, name="Mixed_6a")(x)  # 17x17
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, precision=p, name=name)(x)
    x = InceptionD(precision=p, name="Mixed_7a")(x)  # 8x8
    x = InceptionE(max_pool=False, precision=p, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, precision=p, name="Mixed_7c")(x)
    pool3_Bx2048 = jnp.mean(x, axis=(1, 2))
    logits_Bx1008 = nn.Dense(NUM_LOGITS, precision=p, name="fc")(pool3_Bx2048)
    return pool3_Bx2048, logits_Bx1008


def _linear_taps(in_size: int, out_size: int):
  """Source indices and weights of torch's bilinear resize along one axis (align_corners=False).

  The arithmetic is float32, as torch's, so the taps are the ones torch uses.

  Returns:
    (i0, i1, w0, w1): [out_size] int32 indices and float32 weights; out[o] = w0 x[i0] + w1 x[i1].
  """
  scale = np.float32(in_size) / np.float32(out_size)
  # The centre of output pixel o lies at input coordinate (o + 0.5) * scale - 0.5; torch clamps
  # coordinates left of the first centre to it (no antialiasing filter when shrinking).
  src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
  src = np.maximum(src, np.float32(0))
  i0 = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
  return i0, i1, np.float32(1) - w1, w1


def resize_bilinear(x_BxHxWxC: jax.Array, height: int, width: int) -> jax.Array:
  """Resizes like torch's `F.interpolate(x, (height, width), mode="bilinear", align_corners=False)`.

  No antialiasing, whether growing or shrinking (unlike `jax.image.resize`).

  Args:
    x_BxHxWxC: float images.
    height, width: output size.

  Returns:
    [B, height, width, C] float32.
  """
  x = jnp.asarray(x_BxHxWxC, jnp.float32)
  r0, r1, a0, a1 = _linear_taps(x.shape[1], height)
  c0, c1, b0, b1 = _linear_taps(x.shape[2], width)
  # Along columns, then rows: a0 (b0 x00 + b1 x01) + a1 (b0 x10 + b1 x11), torch's order.
  b0, b1 = b0[None, None, :, None], b1[None, None, :, None]
  x = b0 * jnp.take(x, c0, axis=2) + b1 * jnp.take(x, c1, axis=2)
  a0, a1 = a0[None, :, None, None], a1[None, :, None, None]
  return a0 * jnp.take(x, r0, axis=1) + a1 * jnp.take(x, r1, axis=1)


def preprocess_images(images_BxHxWxC: jax.Array) -> jax.Array:
  """uint8 images of any size, grayscale or RGB -> the network's [-1, 1] 299x299 RGB input.

  Args:
    images_BxHxWxC: uint8, C = 1 (repeated to RGB) or 3.

  Returns:
    x_Bx299x299x3 float32: bilinear(images / 255) * 2 - 1, as pytorch-fid's InceptionV3.
  """
  if images_BxHxWxC.ndim != 4 or images_BxHxWxC.shape[-1] not in (1, 3):
    raise ValueError(
      f"Inception takes images [batch, height, width, 1 or 3 channels], got shape "
      f"{tuple(images_BxHxWxC.shape)}"
    )
  if images_BxHxWxC.dtype != jnp.uint8:
    raise ValueError(
      f"Inception takes uint8 images (FID is computed on quantized pixels), got "
      f"{images_BxHxWxC.dtype}; convert with images.clip(0, 255).round().astype(uint8)"
    )
  x = jnp.asarray(images_BxHxWxC, jnp.float32) / 255.0
  # Resizing is per channel, so a grayscale image is resized once and then repeated.
  x = resize_bilinear(x, INPUT_SIZE, INPUT_SIZE)
  x = jnp.broadcast_to(x, (*x.shape[:3], 3))
  return 2.0 * x - 1.0


@functools.partial(jax.jit, static_argnames="precision")
def inception_features(
  variables, images_BxHxWxC: jax.Array, precision: jax.lax.PrecisionLike = jax.lax.Precision.HIGHEST
) -> tuple[jax.Array, jax.Array]:
  """Pool3 features and logits of uint8 images, as pytorch-fid computes them.

  Pure and per-example, so a batch sharded over devices stays sharded.

  Args:
    variables: {"params", "batch_stats"} from `load_inception_params`.
    images_BxHxWxC: uint8 images of any size; C = 1 (grayscale) or 3 (RGB).
    precision: of the convs and the final layer; see the module docstring.

  Returns:
    pool3_Bx2048: float32 features for FID.
    logits_Bx1008: float32 logits for the Inception Score.
  """
  return InceptionV3(precision=precision).apply(variables, preprocess_images(images_BxHxWxC))


@functools.cache
def abstract_variables() -> dict:
  """The shapes and dtypes of InceptionV3's variables, from `jax.eval_shape` of its init."""
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(InceptionV3().init, jax.random.key(0), x)


# (collection, Flax leaf) -> the torch state-dict suffix holding the same tensor.
_TORCH_LEAF_NAMES = {
  (
    "params",
    "kernel",
  ): "weight",  # conv [O, I, kh, kw] -> [kh, kw, I, O]; fc [out, in] -> [in, out]
  ("params", "scale"): "weight",  # BatchNorm gamma
  ("params", "bias"): "bias",
  ("batch_stats", "mean"): "running_mean",
  ("batch_stats", "var"): "running_var",
}


def _to_torch_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(shape) == 4:
    kh, kw, c_in, c_out = shape
    return (c_out, c_in, kh, kw)
  return tuple(reversed(shape))  # fc [in, out] -> [out, in]; vectors unchanged


def _from_torch_layout(array: np.ndarray) -> np.ndarray:
  return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T


def _torch_tensor_specs() -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """{torch name: (Flax path incl. collection, Flax shape)} for every tensor the network needs."""
  specs = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_variables())[0]:
    keys = tuple(k.key for k in path)
    collection, *modules, leaf_name = keys
    specs[".".join([*modules, _TORCH_LEAF_NAMES[collection, leaf_name]])] = (keys, leaf.shape)
  return specs


def torch_state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """{name: shape} of the tensors pytorch-fid's Inception state dict holds (no BN counters)."""
  return {name: _to_torch_layout(shape) for name, (_, shape) in _torch_tensor_specs().items()}


def variables_from_torch_state_dict(state_dict: dict[str, np.ndarray]) -> dict:
  """Maps pytorch-fid's Inception state dict onto the Flax variables of `InceptionV3`.

  Args:
    state_dict: {torch name: array}, e.g. from `weight_files.read_weights`; BatchNorm
      `num_batches_tracked` counters are ignored.

  Returns:
    {"params": ..., "batch_stats": ...} of float32 arrays.

  Raises:
    ValueError: naming the first missing, unexpected or mis-shaped tensor.
  """
  specs = _torch_tensor_specs()
  tensors = {k: v for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}
  missing = [name for name in specs if name not in tensors]
  if missing:
    raise ValueError(
      f"Inception weights lack tensor {missing[0]} ({len(missing)} missing); expected "
      "pytorch-fid's pt_inception-2015-12-05-6726825d.pth"
    )
  unexpected = sorted(set(tensors) - set(specs))
  if unexpected:
    raise ValueError(
      f"Inception weights have unexpected tensor {unexpected[0]} ({len(unexpected)} unexpected); "
      "expected pytorch-fid's pt_inception-2015-12-05-6726825d.pth"
    )
  variables = {}
  for name, (path, shape) in specs.items():
    array = np.asarray(tensors[name])
    if array.shape != _to_torch_layout(shape):
      raise ValueError(
        f"Inception weight {name} has shape {array.shape}, expected {_to_torch_layout(shape)}"
      )
    node = variables
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(_from_torch_layout(array).astype(np.float32))
  return variables


def load_inception_params(path: str | os.PathLike) -> dict:
  """Reads pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (no PyTorch needed).

  Args:
    path: the weight file (a torch.save'd state dict, zip or legacy format, or safetensors).

  Returns:
    {"params": ..., "batch_stats": ...} for `inception_features` / `InceptionV3.apply`.

  Raises:
    ValueError: the file is unreadable or does not hold this network's tensors.
  """
  return variables_from_torch_state_dict(read_weights(path))
