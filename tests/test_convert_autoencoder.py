"""Converting diffusers AutoencoderKL folders: the converted autoencoder against diffusers' own
outputs (tests/fixtures/diffusers_vae_tiny, written by tests/fixtures/make_autoencoder_fixture.py),
the config mapping and what it refuses, and, with torch, Stable Diffusion's full-size layout."""

import json
import os
import shutil
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from diffusion_jax import models
from diffusion_jax.pretrained import (
  diffusers_autoencoder,
  diffusers_format,
  diffusers_unet,
  weight_files,
)
from diffusion_jax.training import autoencoder_run
from tests.scripts import ROOT, assert_fails_cleanly, run_script

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "diffusers_vae_tiny")
MODEL_DIR = os.path.join(FIXTURES, "model")
WEIGHTS = os.path.join(MODEL_DIR, "diffusion_pytorch_model.safetensors")
IO = dict(np.load(os.path.join(FIXTURES, "model_io.npz")))

with open(os.path.join(MODEL_DIR, "config.json")) as f:
  VAE_CONFIG = json.load(f)


def _functions(config):
  """Jitted encode(params, x) -> (mean, logvar) and decode(params, z) of config's autoencoder."""
  vae = models.create_autoencoder(config)
  encode = jax.jit(lambda p, x: vae.apply({"params": p}, x, method="encode"))
  decode = jax.jit(lambda p, z: vae.apply({"params": p}, z, method="decode"))
  return encode, decode


@pytest.fixture(scope="module")
def converted():
  """(config, params, encode, decode) for the fixture model."""
  config, params = diffusers_autoencoder.load_diffusers_autoencoder(MODEL_DIR)
  return config, params, *_functions(config)


def _max_abs_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_config_is_mapped(converted):
  config = converted[0]
  expected = dict(
    name="autoencoder_kl",
    ch=2,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    num_groups=2,
    latent_channels=2,
    mid_attention=True,
    latent_scale=0.18215,
  )
  assert {k: config.model[k] for k in expected} == expected
  assert config.data.num_channels == 3
  assert models.create_autoencoder(config).factor == 4


def test_converted_autoencoder_matches_diffusers(converted):
  """Max |diff| measured: 2.4e-7 (mean), 2.4e-7 (logvar), 1.7e-6 (decoded), values of size ~1-2."""
  _, params, encode, decode = converted
  mean, logvar = encode(params, IO["x"])
  assert _max_abs_diff(mean, IO["mean"]) < 1e-5
  assert _max_abs_diff(logvar, IO["logvar"]) < 1e-5
  decoded = decode(params, IO["z"])
  assert decoded.shape == IO["decoded"].shape
  assert _max_abs_diff(decoded, IO["decoded"]) < 1e-5


def _state_dict():
  return weight_files.read_weights(WEIGHTS)


def test_pipeline_folder_with_old_attention_names_and_float16(converted, tmp_path):
  """The `vae/` of a pipeline, stored as hub files of 2022 are: query, key, value, proj_attn."""
  _, params, _, _ = converted
  old_names = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value."}
  old_names[".to_out.0."] = ".proj_attn."
  state = {}
  for name, w in _state_dict().items():
    for new, old in old_names.items():
      name = name.replace(new, old)
    state[name] = w.astype(np.float16)
  assert "encoder.mid_block.attentions.0.proj_attn.weight" in state
  os.makedirs(tmp_path / "vae")
  shutil.copy(os.path.join(MODEL_DIR, "config.json"), tmp_path / "vae")
  safetensors.numpy.save_file(state, str(tmp_path / "vae" / diffusers_format.WEIGHT_FILES[0]))
  _, got = diffusers_autoencoder.load_diffusers_autoencoder(str(tmp_path))
  want = jax.tree.map(lambda p: p.astype(np.float16).astype(np.float32), params)
  same = jax.tree.map(lambda a, b: a.dtype == np.float32 and np.array_equal(a, b), got, want)
  assert all(jax.tree.leaves(same))


def test_bfloat16_weights_are_cast(converted):
  config, params, _, _ = converted
  as_bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in _state_dict().items()}
  got = diffusers_autoencoder.convert_params(as_bf16, config)
  want = jax.tree.map(lambda p: p.astype(ml_dtypes.bfloat16).astype(np.float32), params)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, got, want)))


REFUSALS = [
  ({"act_fn": "gelu"}, "act_fn"),
  ({"out_channels": 1}, "out_channels"),
  ({"block_out_channels": [2, 3, 4]}, "block_out_channels"),
  ({"down_block_types": ["DownEncoderBlock2D"] * 2 + ["AttnDownEncoderBlock2D"]}, "down_block"),
  ({"up_block_types": ["UpDecoderBlock2D"] * 2}, "up_block_types"),
  ({"use_quant_conv": False}, "use_quant_conv"),
  ({"use_post_quant_conv": False}, "use_post_quant_conv"),
  ({"shift_factor": 0.0609}, "shift_factor"),
  ({"latents_mean": [0.0, 0.0]}, "latents_mean"),
  ({"_class_name": "AutoencoderTiny"}, "_class_name"),
  ({"double_z": False}, "double_z"),  # a key AutoencoderKL does not have
]


@pytest.mark.parametrize("change, key", REFUSALS, ids=[k for _, k in REFUSALS])
def test_unsupported_configs_are_refused(change, key):
  with pytest.raises(ValueError, match=key) as e:
    diffusers_autoencoder.autoencoder_config({**VAE_CONFIG, **change})
  assert "\n" not in str(e.value)


def test_omitted_keys_take_diffusers_defaults():
  """AutoencoderKL's defaults: one 64-channel level, one ResNet block, 32 groups, 4 channels."""
  mapped = diffusers_autoencoder.autoencoder_config({"_class_name": "AutoencoderKL"})["model"]
  assert (mapped["ch"], mapped["ch_mult"], mapped["num_res_blocks"]) == (64, (1,), 1)
  assert (mapped["num_groups"], mapped["latent_channels"]) == (32, 4)


def test_bad_tensors_are_refused(converted):
  config = converted[0]
  missing = _state_dict()
  del missing["decoder.up_blocks.0.upsamplers.0.conv.bias"]
  with pytest.raises(ValueError, match=r"no tensor decoder\.up_blocks\.0\.upsamplers\.0\.conv\.b"):
    diffusers_autoencoder.convert_params(missing, config)

  extra = _state_dict()
  extra["encoder.down_blocks.0.resnets.1.conv1.weight"] = np.zeros((2, 2, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"1 tensors .* encoder\.down_blocks\.0\.resnets\.1\.conv1"):
    diffusers_autoencoder.convert_params(extra, config)

  reshaped = _state_dict()
  reshaped["quant_conv.weight"] = np.zeros((4, 4), np.float32)
  with pytest.raises(ValueError, match=r"quant_conv\.weight has shape \(4, 4\).*\(4, 4, 1, 1\)"):
    diffusers_autoencoder.convert_params(reshaped, config)


def test_bad_folders_are_refused(tmp_path):
  with pytest.raises(ValueError, match="no config.json, nor vae/config.json"):
    diffusers_autoencoder.find_files(str(tmp_path))
  shutil.copy(os.path.join(MODEL_DIR, "config.json"), tmp_path)
  with pytest.raises(ValueError, match="has no weights; expected diffusion_pytorch_model"):
    diffusers_autoencoder.find_files(str(tmp_path))
  (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderKL",')
  shutil.copy(WEIGHTS, tmp_path)
  with pytest.raises(ValueError, match="config.json is not valid JSON"):
    diffusers_autoencoder.load_diffusers_autoencoder(str(tmp_path))


def test_cli_writes_an_autoencoder_run(converted, tmp_path):
  config, params, _, _ = converted
  workdir = str(tmp_path / "run")
  args = ["--autoencoder", f"--model_dir={MODEL_DIR}", f"--workdir={workdir}"]
  proc = run_script("convert_diffusers.py", *args, check=True)
  assert "AutoencoderKL: 4,391 parameters" in proc.stdout and "f = 4" in proc.stdout, proc.stdout
  vae, loaded, loaded_config = autoencoder_run.load_autoencoder(workdir)
  assert loaded_config.to_dict() == config.to_dict() and vae.factor == 4
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, jax.device_get(loaded), params)))

  args = ["--autoencoder", f"--model_dir={tmp_path}", f"--workdir={tmp_path / 'other'}"]
  assert_fails_cleanly(run_script("convert_diffusers.py", *args), "no config.json, nor vae/")


def test_the_unet_converter_points_to_the_autoencoder_one():
  with pytest.raises(ValueError, match=r"an AutoencoderKL, not a U-Net.*--autoencoder\)$"):
    diffusers_unet.unet_model_config(VAE_CONFIG)


@pytest.mark.parametrize("size", [32])
def test_live_stable_diffusion_layout_against_diffusers(tmp_path, size):
  """With torch and diffusers installed: Stable Diffusion's VAE (83.7M parameters) with random
  weights, converted and compared live. Max |diff| measured: 1.7e-6 (mean), 2.7e-6 (logvar),
  4.8e-6 (decoded), values up to 2.5 (benchmarks/autoencoder_vs_diffusers.py)."""
  pytest.importorskip("torch")
  pytest.importorskip("diffusers")
  sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
  import make_autoencoder_fixture as fixture

  model = fixture.random_autoencoder(fixture.STABLE_DIFFUSION)
  model.save_pretrained(str(tmp_path))
  x, z = fixture.inputs(fixture.STABLE_DIFFUSION, batch=1, size=size)
  want = fixture.diffusers_outputs(model, x, z)
  config, params = diffusers_autoencoder.load_diffusers_autoencoder(str(tmp_path))
  encode, decode = _functions(config)
  mean, logvar = encode(params, x)
  got = dict(mean=mean, logvar=logvar, decoded=decode(params, z))
  for name, value in got.items():
    scale = np.max(np.abs(want[name]))
    assert _max_abs_diff(value, want[name]) < 1e-5 * max(1.0, scale), name
