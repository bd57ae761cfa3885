"""Own networks and configs: a Flax module named in the config or passed to the loop, configs
imported and locked from Python, and paths recorded absolute."""

import json
import os

import numpy as np
import pytest

from diffusion_jax import data
from diffusion_jax.configs import toy2d
from diffusion_jax.evaluation import run_loading
from diffusion_jax.training import loop as train_loop
from diffusion_jax.training import run_config
from tests import custom_network, tiny_configs
from tests.scripts import assert_fails_cleanly, run_script
from tests.test_cli import TOY_FLAGS


def test_a_network_named_in_the_config_trains_and_samples_through_the_scripts(tmp_path):
  workdir = str(tmp_path / "custom")
  flags = [*TOY_FLAGS, "--config.model.name=tests.custom_network:TinyNet", f"--workdir={workdir}"]
  run_script("train.py", *flags, "--config.training.num_train_steps=20", check=True)
  out = str(tmp_path / "out")
  run_script("sample.py", f"--workdir={workdir}", "--num_samples=16", f"--out={out}", check=True)
  points = np.load(os.path.join(out, "samples.npz"))["arr_0"]
  assert points.shape == (16, 2) and np.all(np.isfinite(points))
  bad = run_script(
    "train.py", *TOY_FLAGS, "--config.model.name=tests.nowhere:Net", f"--workdir={tmp_path / 'b'}"
  )
  assert_fails_cleanly(bad, "model.name 'tests.nowhere:Net': cannot import 'tests.nowhere'")


def test_a_module_passed_to_the_loop_is_recorded_and_reloads(tmp_path):
  state = train_loop.train_and_evaluate(
    tiny_configs.toy(num_train_steps=10), str(tmp_path), model=custom_network.TinyNet(width=8)
  )
  with open(tmp_path / "config.json") as f:
    recorded = json.load(f)["model"]
  assert recorded["name"] == "tests.custom_network:TinyNet" and recorded["kwargs"] == {"width": 8}
  run = run_loading.load_run(str(tmp_path))
  assert run.model == custom_network.TinyNet(width=8) and run.step == int(state.step) == 10


def test_configs_are_importable_and_locked():
  config = toy2d.get_config()
  with pytest.raises(AttributeError, match="num_train_step"):
    config.training.num_train_step = 300  # a typo is an error from Python too
  config.training.num_train_steps = 300
  assert config.training.num_train_steps == 300


def test_paths_are_recorded_absolute(tmp_path, monkeypatch):
  images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
  np.savez(tmp_path / "digits.npz", images=images)
  monkeypatch.chdir(tmp_path)
  config = tiny_configs.digits_small(num_train_steps=0)
  config.data.source = "npz"
  config.data.path = "digits.npz"  # relative to where the run started
  train_loop.train_and_evaluate(config, str(tmp_path / "run"))
  monkeypatch.chdir("/")
  with open(tmp_path / "run" / "config.json") as f:
    assert json.load(f)["data"]["path"] == str(tmp_path / "digits.npz")
  recorded = run_config.load_config(str(tmp_path / "run"))
  assert data.create_dataset(recorded.data, 8, seed=0).num_examples == 16  # opens from "/"
