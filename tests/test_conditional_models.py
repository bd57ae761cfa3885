"""Class-conditional U-Net and MLP: the label embedding, the null class, an unchanged parameter
tree when unconditional, and classifier-free guidance's one batched call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import guidance, models, parametrization, schedules
from diffusion_jax.configs import default
from diffusion_jax.models import MLP, UNet

TINY_UNET = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), num_groups=4)
X = np.random.default_rng(0).standard_normal((3, 8, 8, 1)).astype(np.float32)
T = np.array([5, 50, 500], np.int32)


def _random_params(model, x, t, y=None):
  """N(0, 0.3^2) parameters of the model's shapes, drawn with NumPy (no init to compile)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, y_B=y)["params"])
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda s: 0.3 * rng.standard_normal(s.shape, np.float32), shapes)


def _paths(tree) -> set[str]:
  return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("make, x", [(lambda k: UNet(**TINY_UNET, num_classes=k), X)])
def test_unconditional_tree_is_unchanged_and_conditional_adds_one_embedding(make, x):
  plain = jax.eval_shape(lambda: make(0).init(jax.random.key(0), x, T)["params"])
  cond = jax.eval_shape(lambda: make(10).init(jax.random.key(0), x, T)["params"])
  assert not any("label_emb" in p for p in _paths(plain))
  assert _paths(cond) - _paths(plain) == {"['label_emb']['embedding']"}
  assert cond["label_emb"]["embedding"].shape == (11, 4 * TINY_UNET["ch"])  # K + 1: the null


def test_mlp_tree_and_label_effect():
  x, t = np.ones((4, 2), np.float32), np.array([0, 1, 2, 3], np.int32)
  plain = jax.eval_shape(lambda: MLP(hidden_dim=16).init(jax.random.key(0), x, t)["params"])
  model = MLP(hidden_dim=16, num_classes=3)
  params = _random_params(model, x, t)
  assert _paths(params) - _paths(plain) == {"['label_emb']['embedding']"}
  apply = jax.jit(lambda y: model.apply({"params": params}, x, t, y_B=y))
  out = [np.asarray(apply(jnp.full((4,), k, jnp.int32))) for k in range(4)]
  assert all(np.abs(out[i] - out[j]).max() > 1e-3 for i in range(4) for j in range(i))
  null = model.apply({"params": params}, x, t)  # no labels: the null class
  np.testing.assert_allclose(null, out[3], rtol=1e-6)


def test_unet_labels_change_the_output_and_none_is_the_null_class():
  model = UNet(**TINY_UNET, num_classes=2)
  params = _random_params(model, X, T)
  apply = jax.jit(lambda y: model.apply({"params": params}, X, T, y_B=y))
  a, b, null = (np.asarray(apply(jnp.full((3,), k, jnp.int32))) for k in range(3))
  assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()
  np.testing.assert_allclose(jax.jit(lambda: model.apply({"params": params}, X, T))(), null)


def test_labels_are_refused_by_unconditional_networks():
  with pytest.raises(ValueError, match="unconditional .num_classes=0. but was given class labels"):
    jax.eval_shape(lambda: MLP().init(jax.random.key(0), X[:, 0, 0], T, y_B=T))
  with pytest.raises(ValueError, match="MLP is not class-conditional"):
    models.apply(MLP(), {}, X[:, 0, 0], T, train=False, labels=T)
  with pytest.raises(ValueError, match=r"class labels must be int \[3\]"):
    jax.eval_shape(
      lambda: MLP(num_classes=2).init(jax.random.key(0), X[:, 0, 0], T, y_B=T.astype(float))
    )


def test_create_model_reads_num_classes():
  config = default.get_config()
  config.model.update(num_classes=7, **TINY_UNET)
  config.data.image_size = 8
  assert models.create_model(config).num_classes == 7
  config.model.name = "mlp"
  assert models.num_classes_of(models.create_model(config)) == 7


@pytest.mark.parametrize("prediction, learned_variance", [("eps", False), ("v", True)])
def test_guided_denoiser_mixes_conditional_and_null_outputs(prediction, learned_variance):
  """(1 + w) out(x, c) - w out(x, null) from one call on 2B inputs; the variance channels are the
  conditional half's; eps, x0 and v all mix with the same weights."""
  kind = parametrization.Parametrization(prediction, learned_variance)
  model = MLP(hidden_dim=16, num_classes=3, outputs_per_channel=2 if learned_variance else 1)
  x = np.random.default_rng(3).standard_normal((4, 2)).astype(np.float32)
  t, y, w = np.array([1, 20, 50, 90], np.int32), np.array([0, 2, 1, 0], np.int32), 2.5
  params = _random_params(model, x, t)
  calls = []

  def raw(x_, t_, y_):
    calls.append(x_.shape[0])
    return models.apply(model, params, x_, t_, train=False, labels=y_)

  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", 100))
  guided = kind.denoiser(guidance.classifier_free(raw, y, 3, w, learned_variance=learned_variance))
  got = guided(sched, x, t)
  assert calls == [8]
  cond = kind.denoiser(lambda x_, t_: raw(x_, t_, y))(sched, x, t)
  null = kind.denoiser(lambda x_, t_: raw(x_, t_, np.full(4, 3, np.int32)))(sched, x, t)
  for field in ("eps", "x0", "v"):
    expected = (1 + w) * getattr(cond, field) - w * getattr(null, field)
    np.testing.assert_allclose(getattr(got, field), expected, rtol=1e-4, atol=1e-5)
  if learned_variance:
    np.testing.assert_array_equal(got.variance_fraction, cond.variance_fraction)
  via_models = models.denoiser(model, params, kind, labels=y, guidance_scale=w)
  np.testing.assert_allclose(via_models(sched, x, t).eps, got.eps, rtol=1e-6)
  with pytest.raises(ValueError, match="guidance needs class labels"):
    models.denoiser(model, params, kind, guidance_scale=1.0)
