"""Training: EMA and warmup arithmetic, loss falls, resume is exact, 1 vs 4 devices agree."""

import functools
import json
import os
import shutil
import signal

import jax
import numpy as np
import optax
import pytest

from diffusion_jax import data, models, schedules, sharding
from diffusion_jax.training import checkpoints, run_config
from diffusion_jax.training import loop as train_loop
from diffusion_jax.training import state as train_state
from diffusion_jax.training import step as train_step_module
from diffusion_jax.training.step import make_train_step
from tests import tiny_configs


def test_ema_update_matches_numpy():
  rng = np.random.default_rng(0)
  ema = {"a": rng.normal(size=(3, 2)), "b": {"c": rng.normal(size=4)}}
  params = {"a": rng.normal(size=(3, 2)), "b": {"c": rng.normal(size=4)}}
  out = train_state.ema_update(ema, params, 0.9)
  np.testing.assert_allclose(out["a"], 0.9 * ema["a"] + 0.1 * params["a"])
  np.testing.assert_allclose(out["b"]["c"], 0.9 * ema["b"]["c"] + 0.1 * params["b"]["c"])


def test_learning_rate_warms_up_linearly_then_holds():
  config = tiny_configs.toy()
  config.optim.learning_rate, config.optim.warmup_steps = 2e-4, 100
  lr = train_state.learning_rate_schedule(config.optim)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 25, 100, 1000)], [0, 5e-5, 2e-4, 2e-4])


def test_learning_rate_cosine_decay_after_warmup():
  config = tiny_configs.toy()
  config.optim.learning_rate, config.optim.warmup_steps, config.optim.decay_steps = 1e-3, 10, 90
  lr = train_state.learning_rate_schedule(config.optim)
  steps = np.array([5, 10, 40, 55, 100, 150])
  progress = np.clip((steps - 10) / 90, 0, 1)
  expected = 1e-3 * np.minimum(1, steps / 10) * 0.5 * (1 + np.cos(np.pi * progress))
  np.testing.assert_allclose([float(lr(s)) for s in steps], expected, rtol=1e-6, atol=1e-12)


def _state_and_batch(config, mesh):
  model = models.create_model(config)
  ds = data.create_dataset(config.data, config.training.batch_size, config.seed)
  state = jax.jit(
    lambda k: train_state.create_train_state(config, model, ds.example_shape, k),
    out_shardings=sharding.replicated(mesh),
  )(jax.random.key(0))
  return state, sharding.shard_batch(ds.get_batch(0), mesh)


def _mesh_of(n):
  return jax.make_mesh(
    (n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:n]
  )


def test_ema_tracks_params_inside_train_step():
  config = tiny_configs.toy()
  config.training.ema_decay = 0.75
  mesh = sharding.data_mesh()
  state, x0 = _state_and_batch(config, mesh)
  before = jax.device_get(state.ema_params)
  step = make_train_step(
    config, models.create_model(config), schedules.schedule_from_config(config.diffusion), mesh
  )
  state, _ = step(state, x0, jax.random.key(1))
  expected = jax.tree.map(lambda e, p: 0.75 * e + 0.25 * p, before, jax.device_get(state.params))
  jax.tree.map(np.testing.assert_allclose, jax.device_get(state.ema_params), expected)


@pytest.mark.parametrize("make_config", [tiny_configs.toy, tiny_configs.digits_small])
def test_one_and_four_devices_take_the_same_step(make_config):
  config = make_config()
  config.model.dropout = 0.1  # dropout masks must not depend on the device split either
  config.data.random_flip = config.data.random_flip or config.model.name == "unet"
  sched = schedules.schedule_from_config(config.diffusion)
  results = []
  for n in (1, 4):
    mesh = _mesh_of(n)
    state, x0 = _state_and_batch(config, mesh)
    state, metrics = make_train_step(config, models.create_model(config), sched, mesh)(
      state, x0, jax.random.key(3)
    )
    results.append((float(metrics["loss"]), jax.device_get(state.params)))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), *[r[1] for r in results]
  )


def test_loss_falls_on_moons(tmp_path):
  config = tiny_configs.toy(num_train_steps=300)
  config.training.sample_every = 0
  config.training.checkpoint_every = 300
  train_loop.train_and_evaluate(config, str(tmp_path))
  records = _read_metrics(tmp_path)
  first, last = records[0]["loss"], np.mean([r["loss"] for r in records[-5:]])
  assert last < 0.7 * first, (first, last)


def _sgd_step_of_perturbed_unet(dtype: str):
  """(loss, parameter update) of one train step of the tiny digits U-Net computing in dtype, with
  SGD (update = -lr * gradient) from float32 parameters moved off their zero-ish init."""
  config = tiny_configs.digits_small()
  config.model.dtype = dtype
  mesh = sharding.data_mesh()
  model = models.create_model(config)
  ds = data.create_dataset(config.data, config.training.batch_size, config.seed)
  state = jax.jit(
    lambda k: train_state.init_train_state(model, ds.example_shape, k, optax.sgd(1e-2))
  )(jax.random.key(0))
  # The last layers start near zero, so at init the loss hardly depends on the others.
  rng = np.random.default_rng(1)
  params = jax.tree.map(
    lambda p: np.asarray(p) + 0.1 * rng.standard_normal(p.shape, np.float32), state.params
  )
  state = jax.device_put(state.replace(params=params, ema_params=params), sharding.replicated(mesh))
  step = make_train_step(config, model, schedules.schedule_from_config(config.diffusion), mesh)
  state, metrics = step(state, sharding.shard_batch(ds.get_batch(0), mesh), jax.random.key(1))
  update = jax.tree.map(lambda new, old: np.asarray(new) - old, state.params, params)
  return float(metrics["loss"]), update


def test_bfloat16_step_agrees_with_float32_step():
  """bfloat16 keeps 8 significant bits (relative rounding 2^-9, 0.2%) and the gradient passes
  through some 30 layers rounding so. Over 8 draws of perturbation and batch the loss differed by
  5e-5 to 2.3e-3 relatively and the update (L2 over all parameters) by 0.9% to 2.4%; the bounds are
  about twice the worst. SGD, because Adam's first update is lr * sign(gradient), which flips for
  the elements whose gradient is below bfloat16's rounding."""
  loss32, update32 = _sgd_step_of_perturbed_unet("float32")
  loss16, update16 = _sgd_step_of_perturbed_unet("bfloat16")
  assert abs(loss16 - loss32) <= 5e-3 * loss32, (loss16, loss32)
  norm = lambda tree: np.sqrt(sum(np.sum(np.square(x, dtype=np.float64)) for x in tree))
  gap = norm(jax.tree.leaves(jax.tree.map(np.subtract, update16, update32)))
  assert gap <= 0.05 * norm(jax.tree.leaves(update32)), gap / norm(jax.tree.leaves(update32))


def test_bfloat16_run_learns_like_float32_and_keeps_float32_state(tmp_path):
  losses = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_configs.toy(num_train_steps=300)
    config.model.dtype = dtype
    config.training.sample_every = 300  # the preview samples with the bfloat16 network too
    config.training.checkpoint_every = 300
    state = train_loop.train_and_evaluate(config, str(tmp_path / dtype))
    records = _read_metrics(tmp_path / dtype)
    losses[dtype] = records[0]["loss"], np.mean([r["loss"] for r in records[-5:]])
  (first16, last16), last32 = losses["bfloat16"], losses["float32"][1]
  # Same batches and noise: measured 1.057 -> 0.4563 in both, 5e-5 apart at the end.
  assert last16 < 0.7 * first16 and abs(last16 - last32) <= 0.02 * last32, losses
  floats = jax.tree.leaves((state.params, state.ema_params, state.opt_state))
  assert {x.dtype.name for x in floats if x.dtype.kind == "f"} == {"float32"}


def test_bfloat16_digits_unet_run_trains(tmp_path):
  config = tiny_configs.digits_small(num_train_steps=100)
  config.model.dtype = "bfloat16"
  config.training.log_every, config.training.checkpoint_every = 10, 100
  config.optim.warmup_steps, config.optim.learning_rate = 0, 2e-3
  state = train_loop.train_and_evaluate(config, str(tmp_path))
  losses = [r["loss"] for r in _read_metrics(tmp_path) if "loss" in r]
  # Measured: 0.98 over the first 10 steps, 0.61 over the last 10.
  assert len(losses) == 10 and losses[-1] < 0.75 * losses[0], losses
  assert (tmp_path / "previews" / "step_0000100.png").exists()  # sampled in bfloat16
  floats = jax.tree.leaves((state.params, state.ema_params, state.opt_state))
  assert {x.dtype.name for x in floats if x.dtype.kind == "f"} == {"float32"}


def test_a_checkpoint_trained_with_remat_restores_without_it(tmp_path):
  mesh = sharding.data_mesh()
  config = tiny_configs.digits_small()
  sched = schedules.schedule_from_config(config.diffusion)
  saved, x0 = {}, None
  for remat in (True,):  # the other direction is the same code path
    config.model.remat = remat
    state, x0 = _state_and_batch(config, mesh)
    model = models.create_model(config)
    state, _ = make_train_step(config, model, sched, mesh)(state, x0, jax.random.key(1))
    checkpoints.Checkpointer(str(tmp_path / f"remat_{remat}")).save(1, state, wait=True)
    saved[remat] = model, jax.device_get(state)
  t = np.arange(config.training.batch_size) % config.diffusion.num_timesteps
  for remat in (False,):
    config.model.remat = remat
    model = models.create_model(config)
    abstract = train_state.abstract_train_state(config, model, x0.shape[1:], mesh)
    other_model, other_state = saved[not remat]
    reader = checkpoints.Checkpointer(str(tmp_path / f"remat_{not remat}"), read_only=True)
    restored = reader.restore(abstract)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(other_state), strict=True):
      np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(
      models.apply(model, restored.ema_params, x0, t, train=False),
      models.apply(other_model, other_state.ema_params, x0, t, train=False),
      rtol=1e-6,
      atol=1e-7,
    )


def _read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_resumed_run_ends_with_identical_params(tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  final = train_loop.train_and_evaluate(tiny_configs.toy(num_train_steps=30), straight)
  train_loop.train_and_evaluate(tiny_configs.toy(num_train_steps=20), resumed)
  again = train_loop.train_and_evaluate(tiny_configs.toy(num_train_steps=30), resumed)
  assert int(again.step) == int(final.step) == 30
  for a, b in [(final.params, again.params), (final.ema_params, again.ema_params)]:
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_non_finite_loss_stops_with_the_step_and_keeps_good_checkpoint(tmp_path):
  config = tiny_configs.toy(num_train_steps=40)
  config.optim.learning_rate = 1e30
  config.optim.warmup_steps = 0
  config.optim.grad_clip = 0.0
  config.training.log_every = 1
  config.training.checkpoint_every = 1
  with pytest.raises(FloatingPointError, match=r"loss is (nan|inf) at step \d+") as info:
    train_loop.train_and_evaluate(config, str(tmp_path))
  bad_step = int(info.value.args[0].split("at step ")[1].split(";")[0])
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  assert ckpt.latest_step() == bad_step - 1
  ckpt.close()


def test_sigterm_during_a_preview_still_saves_that_step(tmp_path, monkeypatch):
  config = tiny_configs.toy(num_train_steps=40)
  config.training.sample_every = 5
  real_preview = train_loop._write_preview

  def preview_then_terminate(*args):
    real_preview(*args)
    if args[-1] == 15:  # the step
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(train_loop, "_write_preview", preview_then_terminate)
  state = train_loop.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 15
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  assert ckpt.all_steps() == [10, 15]
  ckpt.close()


def _restored_params(workdir, step=None):
  config = run_config.load_config(workdir)
  model = models.create_model(config)
  shape = data.create_dataset(config.data, 64, config.seed).example_shape
  abstract = train_state.abstract_train_state(config, model, shape, sharding.data_mesh())
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    return ckpt.restore(abstract, step)
  finally:
    ckpt.close()


def test_an_update_to_inf_is_never_saved_and_the_good_checkpoint_survives(tmp_path):
  workdir = str(tmp_path)
  train_loop.train_and_evaluate(tiny_configs.toy(num_train_steps=20), workdir)
  config = tiny_configs.toy(num_train_steps=40)
  # The loss of step 21 is computed from finite parameters; its update overflows them.
  config.optim.learning_rate = 1e39
  config.training.checkpoint_every = 1
  with pytest.raises(FloatingPointError) as info:
    train_loop.train_and_evaluate(config, workdir)
  assert str(info.value) == (
    "the parameters hold inf or NaN after the update of step 21; training stopped without "
    "saving them. The last good checkpoint is step 20."
  )
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  assert ckpt.all_steps() == [10, 20]
  ckpt.close()
  state = _restored_params(workdir)
  assert int(state.step) == 20 and checkpoints.tree_is_finite(state)
  # A corrected rerun resumes from the good step.
  final = train_loop.train_and_evaluate(tiny_configs.toy(num_train_steps=30), workdir)
  assert int(final.step) == 30 and checkpoints.tree_is_finite(final)


def test_non_finite_first_step_says_no_checkpoint_was_saved(tmp_path):
  config = tiny_configs.toy(num_train_steps=10)
  config.optim.learning_rate = 1e39
  config.optim.warmup_steps = 0
  config.optim.grad_clip = 0.0
  config.training.log_every = 1
  with pytest.raises(FloatingPointError, match=r"No checkpoint was saved\.$") as info:
    train_loop.train_and_evaluate(config, str(tmp_path))
  assert "None" not in str(info.value)


def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes_exactly(tmp_path):
  straight, damaged = str(tmp_path / "straight"), str(tmp_path / "damaged")
  final = train_loop.train_and_evaluate(tiny_configs.toy(num_train_steps=40), straight)
  train_loop.train_and_evaluate(tiny_configs.toy(num_train_steps=30), damaged)
  os.remove(os.path.join(damaged, "checkpoints", "30", "default", "_METADATA"))
  again = train_loop.train_and_evaluate(tiny_configs.toy(num_train_steps=40), damaged)
  for a, b in [(final.params, again.params), (final.ema_params, again.ema_params)]:
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))
  kept = os.path.join(damaged, checkpoints.UNREADABLE_DIRNAME, "30")
  assert os.path.isdir(kept) and not os.path.exists(os.path.join(kept, "default", "_METADATA"))
  ckpt = checkpoints.Checkpointer(damaged, read_only=True)
  assert ckpt.all_steps() == [20, 30, 40]  # step 30 saved afresh
  ckpt.close()


def test_metrics_have_one_row_per_step_after_an_interrupted_run_resumes(tmp_path):
  workdir = str(tmp_path)
  train_loop.train_and_evaluate(tiny_configs.toy(num_train_steps=30), workdir)
  # As if killed after logging steps 25 and 30 but before step 30's checkpoint was written.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "30"))
  train_loop.train_and_evaluate(tiny_configs.toy(num_train_steps=30), workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == [5, 10, 15, 20, 25, 30]


@pytest.mark.parametrize("make_config", [tiny_configs.toy, tiny_configs.digits_small])
def test_accumulated_micro_batches_take_the_same_step(make_config):
  config = make_config()
  config.model.dropout = 0.0  # masks are drawn per micro-batch; without dropout the step is exact
  config.data.random_flip = config.model.name == "unet"  # flips drawn for the whole batch too
  config.optim.warmup_steps = 0  # a learning rate of 0 at step 0 would leave the params as they are
  # Divisible by 4 micro-batches x 4 devices.
  config.training.batch_size = 64 if config.model.name == "mlp" else 16
  lr = config.optim.learning_rate
  mesh = sharding.data_mesh()
  sched = schedules.schedule_from_config(config.diffusion)
  results = []
  for k in (1, 4):
    config.training.grad_accum_steps = k
    state, x0 = _state_and_batch(config, mesh)
    state, metrics = make_train_step(config, models.create_model(config), sched, mesh)(
      state, x0, jax.random.key(3)
    )
    results.append(jax.device_get((metrics, state.params, state.ema_params)))
  (metrics_1, *trees_1), (metrics_4, *trees_4) = results
  # Four partial sums of the gradient are added in another order than one sum over the batch:
  # measured 7e-8 (loss) and 2e-7 (grad_norm) apart.
  for name in ("loss", "grad_norm"):
    np.testing.assert_allclose(metrics_4[name], metrics_1[name], rtol=1e-6)
  # Adam's first step moves a parameter by lr g / (|g| + eps), which magnifies that rounding where
  # |g| is near eps: measured up to 8.3e-6 of |param| + lr apart (digits), 2.6e-6 (toy).
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * lr), trees_4, trees_1
  )


def test_a_batch_the_micro_batches_cannot_split_evenly_is_refused(tmp_path):
  config = tiny_configs.toy()
  config.training.grad_accum_steps = 32  # 64 examples: 2 per micro-batch, for 4 devices
  with pytest.raises(ValueError, match=r"^training.batch_size 64 must be a multiple of training"):
    train_loop.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "config.json")


def _toy_per_call(num_train_steps, steps_per_call):
  config = tiny_configs.toy(num_train_steps)
  config.training.steps_per_call = steps_per_call
  return config


def _assert_same_params(a, b):
  for x, y in [(a.params, b.params), (a.ema_params, b.ema_params)]:
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(x), jax.device_get(y))


def test_several_steps_per_call_train_exactly_as_one(tmp_path):
  one, five = str(tmp_path / "one"), str(tmp_path / "five")
  # 23 steps: four calls of 5, then one of 3 that ends the run at num_train_steps.
  final_one = train_loop.train_and_evaluate(_toy_per_call(23, 1), one)
  final_five = train_loop.train_and_evaluate(_toy_per_call(23, 5), five)
  assert int(final_one.step) == int(final_five.step) == 23
  _assert_same_params(final_one, final_five)
  rows_one, rows_five = _read_metrics(one), _read_metrics(five)
  assert [r["step"] for r in rows_five] == [r["step"] for r in rows_one] == [5, 10, 15, 20, 23]
  for name in ("loss", "grad_norm", "lr"):
    assert [r[name] for r in rows_five] == [r[name] for r in rows_one]
  assert sorted(os.listdir(os.path.join(five, "previews"))) == [
    "step_0000020.png",
    "step_0000023.png",
  ]
  # Resumed with the other setting: steps 24-25 make a shorter call that reaches a multiple of 5.
  _assert_same_params(
    train_loop.train_and_evaluate(_toy_per_call(30, 5), one),
    train_loop.train_and_evaluate(_toy_per_call(30, 1), five),
  )


def test_the_scan_of_several_steps_matches_them_one_by_one():
  """The accelerators' path of steps_per_call (a lax.scan, not used on the CPU), jitted here."""
  config = tiny_configs.toy()
  mesh = sharding.data_mesh()
  model = models.create_model(config)
  sched = schedules.schedule_from_config(config.diffusion)
  ds = data.create_dataset(config.data, config.training.batch_size, config.seed)
  batches = np.stack([ds.get_batch(i) for i in range(4)])
  state, _ = _state_and_batch(config, mesh)
  kwargs = train_step_module._step_kwargs(config, model, sched, mesh)
  step = functools.partial(train_step_module.train_step, **kwargs)
  scanned = jax.jit(lambda s, x: train_step_module.scan_steps(step, s, x, jax.random.key(1)))
  one = make_train_step(config, model, sched, mesh)
  by_scan, scan_metrics = scanned(state, batches)
  by_steps, step_metrics = state, []
  for x0 in batches:
    by_steps, metrics = one(by_steps, sharding.shard_batch(x0, mesh), jax.random.key(1))
    step_metrics.append(metrics)
  assert int(by_scan.step) == int(by_steps.step) == 4
  for name in ("loss", "grad_norm", "lr"):
    np.testing.assert_allclose(scan_metrics[name], [m[name] for m in step_metrics], rtol=1e-6)
  for a, b in [(by_scan.params, by_steps.params), (by_scan.opt_state, by_steps.opt_state)]:
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a, b)


def test_sigterm_during_a_call_saves_its_end_and_the_resumed_run_is_exact(tmp_path, monkeypatch):
  straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
  final = train_loop.train_and_evaluate(_toy_per_call(30, 5), straight)
  real_make = train_loop.make_train_steps

  def make_terminating(*args):
    train_steps = real_make(*args)

    def terminate_during_steps_11_to_15(state, x0, key):
      if int(state.step) == 10:
        os.kill(os.getpid(), signal.SIGTERM)
      return train_steps(state, x0, key)

    return terminate_during_steps_11_to_15

  with monkeypatch.context() as patch:
    patch.setattr(train_loop, "make_train_steps", make_terminating)
    state = train_loop.train_and_evaluate(_toy_per_call(30, 5), stopped)
  assert int(state.step) == 15
  ckpt = checkpoints.Checkpointer(stopped, read_only=True)
  assert ckpt.all_steps() == [10, 15]
  ckpt.close()
  again = train_loop.train_and_evaluate(_toy_per_call(30, 5), stopped)
  _assert_same_params(final, again)
  rows, straight_rows = _read_metrics(stopped), _read_metrics(straight)
  assert [r["step"] for r in rows] == [r["step"] for r in straight_rows] == [5, 10, 15, 20, 25, 30]
  assert [r["loss"] for r in rows] == [r["loss"] for r in straight_rows]
