"""Tests for diffusion_jax.checkpoints: orbax save/restore, resume after a kill, and the config."""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from diffusion_jax.training import checkpoints, run_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EmaState(train_state.TrainState):
  ema_params: dict


def make_state(kernel_shape=(3, 4), extra_layer=False) -> EmaState:
  """A TrainState after one adam step, so step, moments and EMA all differ from their init."""
  keys = jax.random.split(jax.random.key(0), 2)
  params = {
    "dense": {
      "kernel": jax.random.normal(keys[0], kernel_shape),
      "bias": jax.random.normal(keys[1], kernel_shape[-1:]),
    }
  }
  if extra_layer:
    params["out"] = {"kernel": jnp.ones((kernel_shape[-1], 2))}
  state = EmaState.create(apply_fn=None, params=params, tx=optax.adam(1e-2), ema_params=params)
  grads = jax.tree.map(jnp.ones_like, params)
  state = jax.jit(lambda s, g: s.apply_gradients(grads=g))(state, grads)  # as in training
  return state.replace(ema_params=jax.tree.map(lambda p: 0.5 * p, state.params))


def abstract(state):
  return jax.eval_shape(lambda: state)


def test_roundtrip_is_bit_identical(tmp_path):
  state = make_state()
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  ckpt.save(1, state, wait=True)
  ckpt.close()

  restored = checkpoints.Checkpointer(str(tmp_path)).restore(abstract(state))
  assert isinstance(restored, EmaState)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
    assert np.asarray(got).dtype == np.asarray(want).dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_latest_step_and_max_to_keep(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path), max_to_keep=2)
  assert ckpt.latest_step() is None
  assert ckpt.all_steps() == []
  state = {"w": jnp.zeros((2,))}
  for step in (10, 20, 30):
    ckpt.save(step, state)
  ckpt.wait()
  assert ckpt.latest_step() == 30
  assert ckpt.all_steps() == [20, 30]
  ckpt.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "30"]
  assert checkpoints.Checkpointer(str(tmp_path)).latest_step() == 30


def test_restore_picks_latest_or_given_step(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  for step in (1, 2):
    ckpt.save(step, {"w": jnp.full((2,), float(step))})
  ckpt.wait()
  target = {"w": jax.ShapeDtypeStruct((2,), jnp.float32)}
  np.testing.assert_array_equal(ckpt.restore(target)["w"], [2.0, 2.0])
  np.testing.assert_array_equal(ckpt.restore(target, step=1)["w"], [1.0, 1.0])
  with pytest.raises(ValueError, match=r"no checkpoint for step 5 .*available: \[1, 2\]"):
    ckpt.restore(target, step=5)


def test_restore_without_checkpoint_says_train_first(tmp_path):
  workdir = str(tmp_path / "runs" / "x")
  with pytest.raises(
    FileNotFoundError, match=r"no checkpoint in .*runs/x/checkpoints; train first"
  ):
    checkpoints.Checkpointer(workdir).restore(abstract(make_state()))


@pytest.mark.parametrize(
  "other, expected",
  [
    (
      dict(kernel_shape=(3, 5)),
      r"step 7 does not match the model config: params/dense/bias has shape \(4,\) in the "
      r"checkpoint but \(5,\) in the model$",
    ),
    (
      dict(extra_layer=True),
      r"step 7 does not match the model config: params/out/kernel \(4, 2\) is not in the "
      r"checkpoint$",
    ),
  ],
  ids=["wider_layer", "extra_layer"],
)
def test_restore_with_other_model_config_names_the_param(tmp_path, other, expected):
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  ckpt.save(7, make_state(), wait=True)
  with pytest.raises(ValueError, match=expected) as info:
    ckpt.restore(abstract(make_state(**other)))
  assert "\n" not in str(info.value)


def test_restore_with_smaller_model_names_the_extra_param(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  ckpt.save(7, make_state(extra_layer=True), wait=True)
  with pytest.raises(ValueError, match=r"params/out/kernel \(4, 2\) is in the checkpoint but"):
    ckpt.restore(abstract(make_state()))


def test_restore_into_sharded_abstract_state(tmp_path):
  state = make_state()
  ckpt = checkpoints.Checkpointer(str(tmp_path))
  ckpt.save(1, state, wait=True)
  mesh = jax.make_mesh((4,), ("data",))
  replicated = NamedSharding(mesh, P())
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract(state)
  )
  restored = ckpt.restore(target)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
    assert got.sharding == replicated
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# Saves step 2 in a fresh process whose finalize (orbax's rename of a tmp dir into place) never
# returns, so the parent can SIGKILL it at the worst moment: arrays written, nothing committed.
_STALLED_SAVE = textwrap.dedent(
  """
  import sys, time
  import jax.numpy as jnp
  import orbax.checkpoint as ocp
  from diffusion_jax.training import checkpoints

  async def stall(self):
    print("finalizing", flush=True)
    time.sleep(600)

  ocp.path.atomicity.AtomicRenameTemporaryPath.finalize = stall
  checkpoints.Checkpointer(sys.argv[1]).save(2, {"w": jnp.full((3,), 2.0)}, wait=True)
  """
)


def test_run_killed_mid_save_resumes_from_last_complete_step(tmp_path):
  workdir = str(tmp_path)
  ckpt = checkpoints.Checkpointer(workdir)
  ckpt.save(1, {"w": jnp.full((3,), 1.0)}, wait=True)
  ckpt.close()

  proc = subprocess.Popen(
    [sys.executable, "-c", _STALLED_SAVE, workdir], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
  )
  try:
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    assert ready and proc.stdout.readline().strip() == "finalizing"
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  ckpt_dir = tmp_path / "checkpoints"
  assert list(ckpt_dir.glob("2.orbax-checkpoint-tmp*"))  # the killed save's data is on disk
  assert not (ckpt_dir / "2").exists()

  resumed = checkpoints.Checkpointer(workdir)
  assert resumed.latest_step() == 1
  assert resumed.all_steps() == [1]
  restored = resumed.restore({"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
  np.testing.assert_array_equal(restored["w"], [1.0, 1.0, 1.0])
  resumed.save(2, {"w": jnp.full((3,), 3.0)}, wait=True)  # the resumed run can redo step 2
  assert resumed.all_steps() == [1, 2]
  assert sorted(os.listdir(ckpt_dir)) == ["1", "2"]


def make_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = ml_collections.ConfigDict()
  config.model.ch_mult = (1, 2, 2)
  config.model.attn_resolutions = (16,)
  config.model.dropout = 0.1
  config.model.name = "unet"
  config.optim = ml_collections.ConfigDict({"learning_rate": 2e-4, "clip": True, "decay": None})
  return config


def test_config_roundtrip_keeps_values_and_tuples(tmp_path):
  config = make_config()
  run_config.save_config(str(tmp_path), config)
  loaded = run_config.load_config(str(tmp_path))
  for group, values in config.to_dict().items():  # the rest is configs/default.py's
    if isinstance(values, dict):
      assert {k: loaded[group][k] for k in values} == values, group
    else:
      assert loaded[group] == values
  assert loaded.model.ch_mult == (1, 2, 2) and isinstance(loaded.model.ch_mult, tuple)
  assert loaded.model.attn_resolutions == (16,)
  assert loaded.optim.learning_rate == 2e-4
  with pytest.raises(AttributeError):
    loaded.new_field = 1  # locked
  assert os.listdir(tmp_path) == ["config.json"]  # no temporary file left behind
  assert '"ch_mult": [\n' in (tmp_path / "config.json").read_text()  # human-readable


def test_save_config_refuses_to_clobber_a_different_config(tmp_path):
  run_config.save_config(str(tmp_path), make_config())
  run_config.save_config(str(tmp_path), make_config())  # the same config again is fine
  changed = make_config()
  changed.model.dropout = 0.0
  with pytest.raises(ValueError, match=r"different config \(changed: model\.dropout\)"):
    run_config.save_config(str(tmp_path), changed)
  assert run_config.load_config(str(tmp_path)).model.dropout == 0.1
  # Changes confined to the mutable groups replace the file.
  changed.model.dropout = 0.1
  changed.optim.learning_rate = 1e-4
  with pytest.raises(ValueError, match=r"changed: optim\.learning_rate"):
    run_config.save_config(str(tmp_path), changed, mutable=("training",))
  run_config.save_config(str(tmp_path), changed, mutable=("optim",))
  assert run_config.load_config(str(tmp_path)).optim.learning_rate == 1e-4
  # A mutable field leaves the rest of its group as fixed as ever.
  changed.model.dropout = 0.2
  run_config.save_config(str(tmp_path), changed, mutable=("model.dropout",))
  assert run_config.load_config(str(tmp_path)).model.dropout == 0.2
  changed.model.ch = 8
  with pytest.raises(ValueError, match=r"changed: model\.ch\)"):
    run_config.save_config(str(tmp_path), changed, mutable=("model.dropout",))


def _save_steps(workdir, *steps):
  ckpt = checkpoints.Checkpointer(workdir)
  for step in steps:
    ckpt.save(step, {"w": jnp.full((3,), float(step))})
  ckpt.close()


W_TARGET = {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}


def test_reader_leaves_a_save_in_progress_alone(tmp_path):
  workdir = str(tmp_path)
  _save_steps(workdir, 1)
  in_progress = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp"
  in_progress.mkdir()
  (in_progress / "array").write_bytes(b"half written")
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  reader = checkpoints.Checkpointer(workdir, read_only=True)
  assert reader.all_steps() == [1]
  np.testing.assert_array_equal(reader.restore(W_TARGET)["w"], [1.0, 1.0, 1.0])
  reader.close()
  assert in_progress.exists() and (in_progress / "array").read_bytes() == b"half written"
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_reader_of_an_empty_workdir_creates_nothing(tmp_path):
  reader = checkpoints.Checkpointer(str(tmp_path / "run"), read_only=True)
  with pytest.raises(FileNotFoundError, match="train first"):
    reader.restore(W_TARGET)
  assert not (tmp_path / "run").exists()
  with pytest.raises(ValueError, match="read-only"):
    reader.save(1, {"w": jnp.zeros((3,))})


def _damage(step_dir, how):
  """Damages a saved step as a failing disk or a careless user might."""
  if how == "metadata_deleted":
    os.remove(step_dir / "default" / "_METADATA")
  elif how == "data_truncated":
    data_files = [
      p for p in (step_dir / "default").rglob("*") if p.is_file() and p.parent.name == "d"
    ]
    for path in data_files:
      with open(path, "r+b") as f:
        f.truncate(max(1, path.stat().st_size // 4))
  elif how == "emptied":
    for child in step_dir.iterdir():
      if child.is_dir():
        shutil.rmtree(child)
      else:
        child.unlink()


@pytest.mark.parametrize("how", ["metadata_deleted", "data_truncated", "emptied"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_readable(tmp_path, how, caplog):
  workdir = str(tmp_path)
  _save_steps(workdir, 1, 2, 3)
  _damage(tmp_path / "checkpoints" / "3", how)
  ckpt = checkpoints.Checkpointer(workdir)
  state, skipped = ckpt.restore_newest_readable(W_TARGET)
  np.testing.assert_array_equal(state["w"], [2.0, 2.0, 2.0])
  assert [u.step for u in skipped] == [3]
  assert skipped[0].path == str(tmp_path / "checkpoints" / "3")
  assert "\n" not in skipped[0].reason and len(skipped[0].reason) < 600
  assert (tmp_path / "checkpoints" / "3").exists()  # never deleted
  # The plain restore does the same, with a warning that names the damaged step.
  np.testing.assert_array_equal(ckpt.restore(W_TARGET)["w"], [2.0, 2.0, 2.0])
  # Asked for by number, a damaged step is an error naming it, not a silent substitute.
  with pytest.raises(ValueError, match=r"checkpoint .*checkpoints/3 cannot be read") as info:
    ckpt.restore(W_TARGET, step=3)
  assert "\n" not in str(info.value)
  # A writer moves it out of the rotation, so that step can be saved again; nothing is deleted.
  moved = ckpt.set_aside(3)
  assert moved == str(tmp_path / checkpoints.UNREADABLE_DIRNAME / "3")
  assert os.path.isdir(moved) and ckpt.all_steps() == [1, 2]
  ckpt.save(3, {"w": jnp.full((3,), 9.0)}, wait=True)
  np.testing.assert_array_equal(ckpt.restore(W_TARGET)["w"], [9.0, 9.0, 9.0])
  ckpt.close()


def test_no_readable_checkpoint_is_one_error_naming_each(tmp_path):
  workdir = str(tmp_path)
  _save_steps(workdir, 1, 2)
  _damage(tmp_path / "checkpoints" / "1", "emptied")
  _damage(tmp_path / "checkpoints" / "2", "metadata_deleted")
  with pytest.raises(
    ValueError, match=r"no checkpoint in .* can be read \(step 2 at .*; step 1 at "
  ) as info:
    checkpoints.Checkpointer(workdir, read_only=True).restore(W_TARGET)
  assert "\n" not in str(info.value)


def test_non_finite_states_are_never_saved_and_never_restored(tmp_path):
  workdir = str(tmp_path)
  ckpt = checkpoints.Checkpointer(workdir, max_to_keep=1)
  ckpt.save(1, {"w": jnp.ones((3,)), "step": jnp.int32(1)}, wait=True)
  with pytest.raises(checkpoints.NonFiniteStateError, match="step 2 holds inf or NaN"):
    ckpt.save(2, {"w": jnp.array([1.0, jnp.nan, 1.0]), "step": jnp.int32(2)})
  ckpt.wait()
  assert ckpt.all_steps() == [1]  # and the rotation (keep 1) did not delete the good one
  ckpt.close()
  # A non-finite checkpoint already on disk (e.g. written by an older release) is skipped.
  raw = ocp.CheckpointManager(
    os.path.abspath(tmp_path / "checkpoints"), item_handlers=ocp.StandardCheckpointHandler()
  )
  raw.save(
    5, args=ocp.args.StandardSave({"w": jnp.array([jnp.inf, 0.0, 0.0]), "step": jnp.int32(5)})
  )
  raw.wait_until_finished()
  raw.close()
  target = {"w": W_TARGET["w"], "step": jax.ShapeDtypeStruct((), jnp.int32)}
  state, skipped = checkpoints.Checkpointer(workdir).restore_newest_readable(target)
  assert int(state["step"]) == 1
  assert skipped[0].step == 5 and "inf or NaN" in skipped[0].reason


def test_a_run_recorded_before_a_field_existed_reads_its_default_and_resumes(tmp_path):
  from diffusion_jax.configs import toy2d

  config = toy2d.get_config()
  values = config.to_dict()
  del values["model"]["prediction"]  # as an older release wrote config.json
  os.makedirs(tmp_path, exist_ok=True)
  with open(tmp_path / "config.json", "w") as f:
    json.dump(values, f)
  loaded = run_config.load_config(str(tmp_path))
  assert loaded.model.prediction == "eps" and loaded.model.hidden_dim == config.model.hidden_dim
  run_config.save_config(str(tmp_path), config)  # the same run: no "different config"
