"""Converting diffusers UNet2DModel folders: the converted U-Net against diffusers' own outputs
(tests/fixtures/diffusers_tiny, written by tests/fixtures/make_diffusers_fixtures.py), the config
mapping and what it refuses, workdirs, and the CLI."""

import copy
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from diffusion_jax import models
from diffusion_jax.configs import cifar10
from diffusion_jax.evaluation import run_loading
from diffusion_jax.pretrained import diffusers_format, diffusers_unet, weight_files
from diffusion_jax.training import imported_run, run_config
from tests.scripts import ROOT, assert_fails_cleanly, run_script

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "diffusers_tiny")
MODEL_DIR = os.path.join(FIXTURES, "model")
LEGACY_DIR = os.path.join(FIXTURES, "legacy")  # pipeline layout, old attention names, float16
IO = dict(np.load(os.path.join(FIXTURES, "model_io.npz")))

with open(os.path.join(MODEL_DIR, "config.json")) as f:
  UNET_CONFIG = json.load(f)
with open(os.path.join(MODEL_DIR, "scheduler_config.json")) as f:
  SCHEDULER_CONFIG = json.load(f)


@pytest.fixture(scope="module")
def converted():
  """(config, params, jitted eps(params, x, t)) for the fixture model."""
  config, params = diffusers_unet.load_diffusers_unet(MODEL_DIR)
  model = models.create_model(config)
  return config, params, jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))


def _max_abs_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_config_is_mapped(converted):
  config, _, _ = converted
  # block_out_channels (4, 8, 8), attention at level 1 of an 8x8 input, 2 resnets per level.
  expected = {
    "name": "unet",
    "ch": 4,
    "ch_mult": (1, 2, 2),
    "num_res_blocks": 2,
    "attn_resolutions": (4,),
    "num_groups": 2,
    "dropout": 0.0,
    "resamp_with_conv": True,
  }
  assert {k: config.model[k] for k in expected} == expected
  assert (config.data.image_size, config.data.num_channels) == (8, 3)
  assert (config.data.source, config.data.name) == ("tfds", "cifar10")
  d = config.diffusion
  assert (d.schedule, d.num_timesteps, d.beta_start, d.beta_end) == ("linear", 1000, 1e-4, 0.02)
  assert (config.sampling.variance, config.sampling.clip_x0) == ("fixedsmall", True)


@pytest.mark.parametrize("kind", ["int", "frac"])
def test_converted_unet_matches_diffusers(converted, kind):
  """Max |diff| measured: 8.3e-7 (integer t) and 7.2e-7 (fractional t), outputs of size ~2."""
  _, params, eps = converted
  t = IO[f"t_{kind}"].astype(np.int32 if kind == "int" else np.float32)
  out = eps(params, IO["x"], jnp.asarray(t))
  assert out.shape == IO[f"eps_{kind}"].shape
  assert _max_abs_diff(out, IO[f"eps_{kind}"]) < 1e-5


def test_bin_and_safetensors_give_identical_params(converted):
  config, params, _ = converted
  state_dict = weight_files.read_weights(os.path.join(MODEL_DIR, "diffusion_pytorch_model.bin"))
  from_bin = diffusers_unet.convert_params(state_dict, config)
  assert jax.tree.structure(from_bin) == jax.tree.structure(params)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, from_bin, params)))


def test_pipeline_folder_with_old_attention_names_and_float16(converted):
  config, params, _ = converted
  legacy_config, legacy_params = diffusers_unet.load_diffusers_unet(LEGACY_DIR)
  assert legacy_config.to_dict() == config.to_dict()
  as_float16 = jax.tree.map(lambda p: p.astype(np.float16).astype(np.float32), params)
  same = jax.tree.map(
    lambda a, b: a.dtype == np.float32 and np.array_equal(a, b), legacy_params, as_float16
  )
  assert all(jax.tree.leaves(same))


def test_bfloat16_weights_are_cast(converted):
  config, params, _ = converted
  as_bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in _state_dict().items()}
  got = diffusers_unet.convert_params(as_bf16, config)
  want = jax.tree.map(lambda p: p.astype(ml_dtypes.bfloat16).astype(np.float32), params)
  same = jax.tree.map(lambda a, b: a.dtype == np.float32 and np.array_equal(a, b), got, want)
  assert all(jax.tree.leaves(same))


def test_base_config_sets_everything_else():
  base = cifar10.get_config()
  base.training.batch_size = 7
  config, _ = diffusers_unet.load_diffusers_unet(MODEL_DIR, base_config=base)
  assert config.training.batch_size == 7 and config.model.ch == 4


UNET_REFUSALS = [
  ({"downsample_padding": 1}, "downsample_padding"),
  ({"flip_sin_to_cos": True}, "flip_sin_to_cos"),
  ({"freq_shift": 0}, "freq_shift"),
  ({"time_embedding_type": "fourier"}, "time_embedding_type"),
  ({"act_fn": "gelu"}, "act_fn"),
  ({"norm_eps": 1e-5}, "norm_eps"),
  ({"center_input_sample": True}, "center_input_sample"),
  ({"mid_block_scale_factor": 2}, "mid_block_scale_factor"),
  ({"attention_head_dim": 4}, "attention_head_dim"),  # two heads of 4 at width 8
  ({"out_channels": 6}, "out_channels"),
  ({"up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D"]}, "up_block_types"),
  ({"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]}, "CrossAttn"),
  ({"block_out_channels": [4, 6, 8]}, "block_out_channels"),
  ({"class_embed_type": "timestep"}, "class_embed_type"),
  ({"num_class_embeds": 10}, "num_class_embeds"),
  ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
  ({"add_attention": False}, "add_attention"),
  ({"attn_norm_num_groups": 1}, "attn_norm_num_groups"),
  ({"time_embedding_dim": 32}, "time_embedding_dim"),
  ({"downsample_type": "resnet"}, "downsample_type"),
  ({"mid_block_type": None}, "mid_block_type"),
  ({"sample_size": [8, 16]}, "sample_size"),
  ({"_class_name": "UNet2DConditionModel"}, "_class_name"),
  ({"cross_attention_dim": 8}, "cross_attention_dim"),  # a key UNet2DModel does not have
  ({"freq_shift": None}, "freq_shift"),
]


@pytest.mark.parametrize("change, key", UNET_REFUSALS, ids=[k for _, k in UNET_REFUSALS])
def test_unsupported_unet_configs_are_refused(change, key):
  with pytest.raises(ValueError, match=key) as e:
    diffusers_unet.unet_model_config({**UNET_CONFIG, **change})
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("key", ["freq_shift", "flip_sin_to_cos", "norm_eps", "downsample_padding"])
def test_omitted_keys_take_diffusers_defaults(key):
  """UNet2DModel's defaults (freq_shift 0, flip True, eps 1e-5, padding 1) are not ours."""
  config = {k: v for k, v in UNET_CONFIG.items() if k != key}
  with pytest.raises(ValueError, match=key):
    diffusers_unet.unet_model_config(config)


SCHEDULER_REFUSALS = [
  ({"prediction_type": "flow"}, "prediction_type"),
  ({"clip_sample_range": 2.0}, "clip_sample_range"),
  ({"variance_type": "learned_range"}, "variance_type"),
  ({"beta_schedule": "laplace"}, "beta_schedule"),
  ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
  ({"thresholding": True}, "thresholding"),
  ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
  ({"_class_name": "PNDMScheduler"}, "_class_name"),
  ({"_class_name": "DDIMScheduler", "set_alpha_to_one": False}, "set_alpha_to_one"),
  ({"skip_prk_steps": True}, "skip_prk_steps"),
  ({"predict_epsilon": False}, "predict_epsilon"),
]


@pytest.mark.parametrize("change, key", SCHEDULER_REFUSALS, ids=[k for _, k in SCHEDULER_REFUSALS])
def test_unsupported_scheduler_configs_are_refused(change, key):
  config = {**SCHEDULER_CONFIG, **change}
  if config["_class_name"] == "DDIMScheduler":
    del config["variance_type"]
  with pytest.raises(ValueError, match=key):
    diffusers_unet.scheduler_config(config)


def test_scheduler_mappings():
  def mapped(**change):
    return diffusers_unet.scheduler_config({**SCHEDULER_CONFIG, **change})

  assert mapped(beta_schedule="scaled_linear")["diffusion"]["schedule"] == "quad"
  assert mapped(beta_schedule="squaredcos_cap_v2")["diffusion"]["schedule"] == "cosine"
  predictions = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
  for theirs, ours in predictions.items():
    assert mapped(prediction_type=theirs)["model"] == {"prediction": ours}
  assert mapped(variance_type="fixed_large", clip_sample=False)["sampling"] == {
    "variance": "fixedlarge",
    "clip_x0": False,
  }
  # DDIMScheduler has no variance: the base config's stays.
  ddim = {k: v for k, v in SCHEDULER_CONFIG.items() if k != "variance_type"}
  assert diffusers_unet.scheduler_config({**ddim, "_class_name": "DDIMScheduler"})["sampling"] == {
    "clip_x0": True
  }


def test_keys_of_early_diffusers_releases_are_read():
  early = {**SCHEDULER_CONFIG, "tensor_format": "pt", "predict_epsilon": True}
  assert diffusers_unet.scheduler_config(early) == diffusers_unet.scheduler_config(SCHEDULER_CONFIG)


def _state_dict():
  return weight_files.read_weights(os.path.join(MODEL_DIR, "diffusion_pytorch_model.safetensors"))


def test_bad_tensors_are_refused(converted):
  config = converted[0]
  missing = _state_dict()
  del missing["mid_block.attentions.0.to_k.bias"]
  with pytest.raises(ValueError, match=r"no tensor mid_block\.attentions\.0\.to_k\.bias"):
    diffusers_unet.convert_params(missing, config)

  extra = _state_dict()
  extra["down_blocks.0.resnets.2.conv1.weight"] = np.zeros((4, 4, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"1 tensors .* down_blocks\.0\.resnets\.2\.conv1\.weight"):
    diffusers_unet.convert_params(extra, config)

  reshaped = _state_dict()
  reshaped["up_blocks.1.attentions.0.to_q.weight"] = np.zeros((8, 4), np.float32)
  with pytest.raises(ValueError, match=r"to_q\.weight has shape \(8, 4\).*implies \(8, 8\)"):
    diffusers_unet.convert_params(reshaped, config)

  ints = _state_dict()
  ints["conv_out.bias"] = np.zeros(3, np.int64)
  with pytest.raises(ValueError, match="conv_out.bias has dtype int64"):
    diffusers_unet.convert_params(ints, config)

  # The same weights against another architecture: the first differing tensor is named.
  other = copy.deepcopy(config)
  other.model.ch_mult = (1, 2, 4)
  with pytest.raises(ValueError, match=r"down_blocks\.2\.resnets\.0\.conv1\.bias has shape \(8,\)"):
    diffusers_unet.convert_params(_state_dict(), other)


def test_folders_without_weights_or_scheduler_are_refused(tmp_path):
  folder = tmp_path / "model"
  shutil.copytree(MODEL_DIR, folder)
  os.remove(folder / "scheduler_config.json")
  with pytest.raises(ValueError, match="no scheduler_config.json"):
    diffusers_unet.find_files(str(folder))
  for name in diffusers_format.WEIGHT_FILES:
    os.remove(folder / name)
  with pytest.raises(ValueError, match="has no weights"):
    diffusers_unet.find_files(str(folder))
  with pytest.raises(ValueError, match="no config.json"):
    diffusers_unet.find_files(str(tmp_path))


def test_workdir_loads_like_a_trained_run(converted, tmp_path):
  config, params, eps = converted
  workdir = str(tmp_path / "run")
  imported_run.write_run(workdir, config, params)
  run = run_loading.load_run(workdir)
  assert run.step == 0 and run.config.to_dict() == config.to_dict()
  ema = jax.device_get(run.params)  # host arrays: the jitted eps is compiled for these already
  out = eps(ema, IO["x"], jnp.asarray(IO["t_int"], jnp.int32))
  assert _max_abs_diff(out, IO["eps_int"]) < 1e-5
  raw = jax.device_get(run_loading.load_run(workdir, use_ema=False).params)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, raw, ema)))

  with pytest.raises(ValueError, match="already holds a run"):
    imported_run.write_run(workdir, config, params)
  base = cifar10.get_config()
  base.sampling.batch_size = 5
  config, params = diffusers_unet.load_diffusers_unet(MODEL_DIR, base_config=base)
  imported_run.write_run(workdir, config, params, overwrite=True)
  assert run_config.load_config(workdir).sampling.batch_size == 5
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["0"]


def test_cli(tmp_path):
  workdir = str(tmp_path / "run")
  args = [f"--model_dir={LEGACY_DIR}", f"--workdir={workdir}"]
  proc = run_script("convert_diffusers.py", *args, check=True)
  assert "26,755 parameters" in proc.stdout and "linear betas" in proc.stdout
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["0"]

  assert_fails_cleanly(run_script("convert_diffusers.py", *args), "--overwrite")


def test_live_against_diffusers_with_another_init(converted, tmp_path):
  """With torch and diffusers installed: a fresh random init, converted and compared live."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("diffusers")
  sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
  import make_diffusers_fixtures as fixtures

  config, _, eps = converted
  model = fixtures.random_model(seed=1)
  model.save_pretrained(str(tmp_path))
  with torch.no_grad():
    expected = fixtures.nhwc(model(fixtures.nchw(IO["x"]), torch.from_numpy(IO["t_frac"])).sample)
  state_dict = weight_files.read_weights(tmp_path / "diffusion_pytorch_model.safetensors")
  params = diffusers_unet.convert_params(state_dict, config)
  assert _max_abs_diff(eps(params, IO["x"], jnp.asarray(IO["t_frac"])), expected) < 1e-5
