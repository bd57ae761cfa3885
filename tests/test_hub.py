"""Models by Hub name, from a Hugging Face cache laid out by hand as huggingface_hub writes it;
offline throughout, so no test asks the network."""

import hashlib
import os
import shutil
import types

import huggingface_hub
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from diffusion_jax.pretrained import diffusers_autoencoder, diffusers_unet, hub
from diffusion_jax.training import run_config
from tests.scripts import ROOT, assert_fails_cleanly, run_script

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "diffusers_tiny")
MODEL_DIR = os.path.join(FIXTURES, "model")
PIPELINE_DIR = os.path.join(FIXTURES, "legacy")
REPO = "google/ddpm-cifar10-32"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MODEL_FILES = ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json")
PIPELINE_FILES = (
  "model_index.json",
  "unet/config.json",
  "unet/diffusion_pytorch_model.safetensors",
  "scheduler/scheduler_config.json",
)


def _cache(cache, source, files, repo=REPO, commit=COMMIT, refs=("main",), symlinks=True):
  """Lays out repo at commit in the cache as huggingface_hub does; returns the snapshot folder.

  <cache>/models--owner--name/refs/<ref> holds the commit hash (no newline: it is read verbatim),
  snapshots/<commit>/<file> links to blobs/<sha256 of the content>, or is a copy of it.
  """
  repo_dir = os.path.join(cache, "models--" + repo.replace("/", "--"))
  snapshot = os.path.join(repo_dir, "snapshots", commit)
  for name in files:
    with open(os.path.join(source, name), "rb") as f:
      content = f.read()
    blob = os.path.join(repo_dir, "blobs", hashlib.sha256(content).hexdigest())
    os.makedirs(os.path.dirname(blob), exist_ok=True)
    with open(blob, "wb") as f:
      f.write(content)
    path = os.path.join(snapshot, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if symlinks:
      os.symlink(os.path.relpath(blob, os.path.dirname(path)), path)
    else:
      shutil.copyfile(blob, path)
  os.makedirs(os.path.join(repo_dir, "refs"), exist_ok=True)
  for ref in refs:
    with open(os.path.join(repo_dir, "refs", ref), "w") as f:
      f.write(commit)
  return snapshot


@pytest.mark.parametrize("symlinks", [True, False], ids=["blob_links", "copies"])
def test_the_snapshot_folder_of_a_cached_model(tmp_path, symlinks):
  snapshot = _cache(str(tmp_path), MODEL_DIR, MODEL_FILES, symlinks=symlinks)
  assert hub.model_folder(REPO, cache_dir=str(tmp_path), local_files_only=True) == snapshot
  # The layout is one huggingface_hub's own offline lookup reads.
  kwargs = {"cache_dir": str(tmp_path), "local_files_only": True}
  assert huggingface_hub.snapshot_download(REPO, **kwargs) == snapshot


def test_a_pipeline_by_tag_and_by_commit(tmp_path):
  snapshot = _cache(str(tmp_path), PIPELINE_DIR, PIPELINE_FILES, refs=("v1",))
  for revision in ("v1", COMMIT):
    found = hub.model_folder(REPO, revision, cache_dir=str(tmp_path), local_files_only=True)
    assert found == snapshot
  with pytest.raises(ValueError, match=f"{REPO} is not cached"):  # no refs/main
    hub.model_folder(REPO, cache_dir=str(tmp_path), local_files_only=True)


def test_uncached_partly_cached_and_malformed_names_are_refused(tmp_path):
  cache = str(tmp_path)
  with pytest.raises(ValueError, match=f"{REPO} is not cached .* is set; run once"):
    hub.model_folder(REPO, cache_dir=cache, local_files_only=True)
  _cache(cache, MODEL_DIR, ("config.json", "scheduler_config.json"))
  with pytest.raises(ValueError, match="only partly cached .* the cached copy has no weights"):
    hub.model_folder(REPO, cache_dir=cache, local_files_only=True)
  with pytest.raises(ValueError, match="'a/b/c' is not a Hub model name"):
    hub.model_folder("a/b/c", cache_dir=cache, local_files_only=True)


class _FakeHub:
  """Stands in for the Hub: lists `files` or raises `error`, records what is downloaded."""

  def __init__(self, monkeypatch, files=(), error=None, snapshot="/snapshot"):
    self.files, self.error, self.snapshot, self.downloads = files, error, snapshot, []
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub.huggingface_hub, "HfApi", lambda: self)
    monkeypatch.setattr(hub.huggingface_hub, "snapshot_download", self.snapshot_download)

  def model_info(self, repo_id, revision=None):
    if self.error is not None:
      raise self.error
    return types.SimpleNamespace(siblings=[types.SimpleNamespace(rfilename=f) for f in self.files])

  def snapshot_download(self, repo_id, revision=None, cache_dir=None, allow_patterns=None):
    self.downloads.append(allow_patterns)
    return self.snapshot


def _http_error(cls):
  """An instance of one of huggingface_hub's HTTP errors, made without an HTTP response."""
  error = cls.__new__(cls)
  Exception.__init__(error, "404 Client Error")
  return error


def test_online_only_the_files_read_are_downloaded(monkeypatch):
  extras = [".gitattributes", "README.md", "images/generated_image_0.png"]
  fake = _FakeHub(monkeypatch, [*extras, *MODEL_FILES, "diffusion_pytorch_model.bin"])
  assert hub.model_folder(REPO) == "/snapshot"
  assert fake.downloads == [list(MODEL_FILES)]  # safetensors only, where there are both
  fake.files = [*extras, "model_index.json", *PIPELINE_FILES[1:]]
  hub.model_folder(REPO)
  assert fake.downloads[-1] == list(PIPELINE_FILES[1:])
  fake.files = ["config.json", "scheduler_config.json"]
  with pytest.raises(ValueError, match=f"{REPO} on the Hugging Face Hub has no weights"):
    hub.model_folder(REPO)


def test_an_autoencoder_is_fetched_alone_and_found_in_the_cache(monkeypatch, tmp_path):
  choose = diffusers_autoencoder.choose_files
  vae_files = ["vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
  fake = _FakeHub(monkeypatch, [*PIPELINE_FILES, *vae_files, "vae/diffusion_pytorch_model.bin"])
  hub.model_folder("runwayml/stable-diffusion-v1-5", files=choose)
  assert fake.downloads == [vae_files]  # of a whole pipeline, only its autoencoder
  monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
  vae_dir = os.path.join(ROOT, "tests", "fixtures", "diffusers_vae_tiny", "model")
  files = ("config.json", "diffusion_pytorch_model.safetensors")
  snapshot = _cache(str(tmp_path), vae_dir, files, repo="stabilityai/sd-vae-ft-mse")
  found = hub.model_folder("stabilityai/sd-vae-ft-mse", cache_dir=str(tmp_path), files=choose)
  assert found == snapshot
  with pytest.raises(ValueError, match="google/ddpm-cifar10-32 is not cached"):
    hub.model_folder(REPO, cache_dir=str(tmp_path), files=choose)


def test_online_errors(monkeypatch, tmp_path):
  fake = _FakeHub(monkeypatch, error=_http_error(hub.RepositoryNotFoundError))
  with pytest.raises(ValueError, match=f"{REPO}: no such model on the Hugging Face Hub"):
    hub.model_folder(REPO)
  fake.error = _http_error(hub.RevisionNotFoundError)
  with pytest.raises(ValueError, match=f"{REPO} has no revision 'v2' on the Hugging Face Hub"):
    hub.model_folder(REPO, "v2")
  # No route to the Hub: the cache answers, else the error says both.
  fake.error = ConnectionError("Name or service not known\nmore")
  with pytest.raises(
    ValueError, match=r"asking the Hub failed \(ConnectionError: Name or .* known\);"
  ):
    hub.model_folder(REPO, cache_dir=str(tmp_path))
  snapshot = _cache(str(tmp_path), MODEL_DIR, MODEL_FILES)
  assert hub.model_folder(REPO, cache_dir=str(tmp_path)) == snapshot
  assert fake.downloads == []

  fake.error, fake.files = None, MODEL_FILES

  def broken_download(*args, **kwargs):
    raise TimeoutError("read timed out\n")

  monkeypatch.setattr(hub.huggingface_hub, "snapshot_download", broken_download)
  with pytest.raises(ValueError, match=f"downloading config.json, .* of {REPO} failed: Timeout"):
    hub.model_folder(REPO)


def _offline_env(cache):
  # huggingface_hub reads these when it is imported, which the subprocess does after they are set.
  return {"HF_HUB_CACHE": cache, "HF_HOME": cache, "HF_HUB_OFFLINE": "1"}


def test_cli_converts_from_the_cache_as_from_the_folder(tmp_path):
  cache, workdir = str(tmp_path / "cache"), str(tmp_path / "run")
  _cache(cache, MODEL_DIR, MODEL_FILES)
  args = [f"--model={REPO}", f"--workdir={workdir}"]
  run_script("convert_diffusers.py", *args, check=True, env=_offline_env(cache))
  config, params = diffusers_unet.load_diffusers_unet(MODEL_DIR)  # what --model_dir converts
  assert run_config.load_config(workdir).to_dict() == config.to_dict()
  # The raw tree, as orbax stored it: evaluation.run_loading's typed restore traces the U-Net
  # (seconds), and test_convert_diffusers shows already that write_run's workdirs load.
  manager = ocp.CheckpointManager(
    os.path.join(workdir, "checkpoints"),
    options=ocp.CheckpointManagerOptions(read_only=True, create=False),
    item_handlers=ocp.StandardCheckpointHandler(),
  )
  stored = jax.device_get(manager.restore(0))
  manager.close()
  for tree in (stored["params"], stored["ema_params"]):
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, tree, params)))


@pytest.mark.parametrize(
  "args, message",
  [
    (
      [f"--model={REPO}"],
      f"{REPO} is not cached (Hugging Face cache CACHE) and HF_HUB_OFFLINE is set; run once with "
      "network access to download it, or convert a downloaded folder (--model_dir)",
    ),
    ([f"--model={REPO}", f"--model_dir={MODEL_DIR}"], "give exactly one of --model (a Hub name)"),
    ([], "give exactly one of --model (a Hub name) and --model_dir (a local folder)"),
    ([f"--model_dir={MODEL_DIR}", "--revision=v1"], "--revision goes with --model"),
  ],
  ids=["uncached", "both", "neither", "revision_of_a_folder"],
)
def test_cli_errors(tmp_path, args, message):
  cache, workdir = str(tmp_path / "cache"), str(tmp_path / "run")
  proc = run_script("convert_diffusers.py", *args, f"--workdir={workdir}", env=_offline_env(cache))
  assert_fails_cleanly(proc, message.replace("CACHE", cache))
  assert not os.path.exists(workdir)
