"""Two processes on one machine (jax.distributed, gloo CPU collectives) against one process.

Each run below starts train.py, sample.py, evaluate.py or evaluate_bpd.py twice, as processes 0
and 1 of one job with two CPU devices each, and compares what they write with this test process,
which has four devices (conftest.py). Four devices on both sides give every device the same
slice of every batch, so the only differences left are in sums across devices.
"""

import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from diffusion_jax import models, samplers, schedules, sharding
from diffusion_jax.cli import sample_outputs
from diffusion_jax.evaluation import bits_per_dim, run_loading, scoring
from diffusion_jax.metrics import digits_classifier, feature_nets, sample_quality, scores
from diffusion_jax.training import checkpoints, latent_cache, latent_space, run_config
from diffusion_jax.training import loop as train_loop
from diffusion_jax.training import state as train_state
from tests import tiny_configs
from tests.scripts import ROOT

# Training on two processes sums the gradients of the four devices across processes (gloo), in
# another order than one process does, so parameters differ in their last bits: about 3e-8 after
# 20 toy steps. 1e-6 is far above that and far below one Adam update (about the learning rate,
# 1e-5 at the first step of warmup), so a lost step or a wrong batch slice fails.
PARAMS_TOLERANCE = dict(rtol=1e-6, atol=1e-6)
# Sampling and evaluation have no sums across devices; the two sides agree to float rounding.
OUTPUT_TOLERANCE = dict(rtol=1e-6, atol=1e-6)
TIMEOUT = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _cli_flags(config, config_file: str) -> list[str]:
  """--config=<file> plus an override for every field where `config` differs from the file's."""
  module = importlib.import_module(config_file.removesuffix(".py").replace("/", "."))
  flat_base, flat = (
    run_config.flatten(module.get_config().to_dict()),
    run_config.flatten(config.to_dict()),
  )
  overrides = [
    f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
    for k, v in flat.items()
    if flat_base[k] != v
  ]
  return [f"--config={config_file}", *overrides]


class TwoProcesses:
  """`python <script> <args>` started as processes 0 and 1 of one job, output to log files."""

  def __init__(self, logdir, script: str, *args: str, env: dict | None = None):
    port = _free_port()
    xla_flags = [
      f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f
    ]
    env = dict(
      os.environ,
      **(env or {}),
      XLA_FLAGS=" ".join([*xla_flags, "--xla_force_host_platform_device_count=2"]),
    )
    os.makedirs(logdir, exist_ok=True)
    self.logs = [os.path.join(logdir, f"{os.path.basename(script)}.{i}.log") for i in range(2)]
    self.procs = []
    for i, log in enumerate(self.logs):
      with open(log, "w") as f:
        self.procs.append(
          subprocess.Popen(
            [
              sys.executable,
              script,
              *args,
              f"--coordinator_address=localhost:{port}",
              "--num_processes=2",
              f"--process_id={i}",
            ],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            text=True,
          )
        )

  def output(self, i: int) -> str:
    with open(self.logs[i]) as f:
      return f.read()

  def wait(self, timeout: float = TIMEOUT) -> list[str]:
    """Waits for both to exit 0 and returns their output; a failure stops the other at once
    (it would otherwise wait out the coordination service's timeouts)."""
    deadline = time.time() + timeout
    try:
      while any(p.poll() is None for p in self.procs):
        failed = [p for p in self.procs if p.poll() not in (None, 0)]
        assert not failed and time.time() < deadline, "a process failed or timed out"
        time.sleep(0.2)
    except AssertionError:
      self.kill()
      raise AssertionError("\n\n".join(self.output(i)[-3000:] for i in range(2))) from None
    for i, p in enumerate(self.procs):
      assert p.returncode == 0, self.output(i)[-3000:]
    return [self.output(i) for i in range(2)]

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def run_two(logdir, script: str, *args: str, env: dict | None = None) -> list[str]:
  return TwoProcesses(logdir, script, *args, env=env).wait()


def _restore(workdir, step=None):
  """The params and EMA params of a checkpoint, restored in this (one) process."""
  config = run_config.load_config(workdir)
  model = models.create_model(config)
  shape = run_loading.example_shape_for(config)
  ckpt = checkpoints.Checkpointer(workdir)
  try:
    abstract = train_state.abstract_train_state(config, model, shape, sharding.data_mesh())
    state = ckpt.restore(abstract, step)
  finally:
    ckpt.close()
  return int(state.step), jax.device_get({"params": state.params, "ema": state.ema_params})


def assert_same_params(workdir_a, workdir_b):
  step_a, params_a = _restore(workdir_a)
  step_b, params_b = _restore(workdir_b)
  assert step_a == step_b
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, **PARAMS_TOLERANCE), params_a, params_b
  )


def _keep_only_step(workdir, step):
  """Removes the checkpoints after `step`, as if the run had stopped there."""
  directory = os.path.join(workdir, "checkpoints")
  for name in os.listdir(directory):
    if name.isdigit() and int(name) > step:
      shutil.rmtree(os.path.join(directory, name))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  """20 toy steps in this process (checkpoints at 10 and 20): the one-process reference."""
  workdir = str(tmp_path_factory.mktemp("toy_one"))
  config = tiny_configs.toy(num_train_steps=20)
  train_loop.train_and_evaluate(config, workdir)
  return config, workdir


def test_training_matches_one_process_and_resumes_on_one(toy_run, tmp_path):
  """20 steps on two processes end with one process's params; their step-10 checkpoint, resumed
  on one process, ends there too."""
  config, one = toy_run
  two = str(tmp_path / "two")
  run_two(
    tmp_path / "logs", "train.py", *_cli_flags(config, "configs/toy2d.py"), f"--workdir={two}"
  )
  assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == ["10", "20"]
  assert os.path.exists(os.path.join(two, "previews", "step_0000020.png"))
  assert_same_params(one, two)

  # Two processes' checkpoint at step 10, resumed on one.
  _keep_only_step(two, 10)
  train_loop.train_and_evaluate(config, two)
  assert_same_params(one, two)


@pytest.mark.parametrize("steps_per_call", [1, 5])
def test_sigterm_to_one_process_stops_both_at_one_step_and_they_resume(
  toy_run, tmp_path, steps_per_call
):
  """Two processes resume a one-process checkpoint; SIGTERM to one of them stops both at the same
  step (the end of a call); one process resumes that and ends where an uninterrupted one-process
  run does."""
  config, one = toy_run
  workdir = str(tmp_path / "run")
  shutil.copytree(one, workdir)
  _keep_only_step(workdir, 10)
  os.remove(os.path.join(workdir, "metrics.jsonl"))  # its first new line says training runs
  config = tiny_configs.toy(num_train_steps=100_000)
  config.training.checkpoint_every = 100_000
  config.training.sample_every = 0
  config.training.steps_per_call = steps_per_call
  flags = _cli_flags(config, "configs/toy2d.py")
  job = TwoProcesses(tmp_path / "logs", "train.py", *flags, f"--workdir={workdir}")
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + TIMEOUT
  try:
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
      assert all(p.poll() is None for p in job.procs) and time.time() < deadline, job.output(0)
      time.sleep(0.2)
  except AssertionError:
    job.kill()
    raise
  job.procs[1].send_signal(signal.SIGTERM)  # process 0 hears of it only through the coordinator
  outputs = job.wait()

  assert all("resumed from step 10" in out for out in outputs)
  steps = sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")))
  assert len(steps) == 2 and steps[0] == 10 and steps[1] > 10, steps
  saved = steps[1]
  assert saved % steps_per_call == 0
  for out in outputs:
    assert re.findall(r"SIGTERM: saved a checkpoint at step (\d+)", out) == [str(saved)]
  config.training.num_train_steps = saved + 5
  train_loop.train_and_evaluate(config, workdir)
  uninterrupted = str(tmp_path / "uninterrupted")
  shutil.copytree(one, uninterrupted)  # resumed runs equal uninterrupted ones (test_train.py)
  train_loop.train_and_evaluate(config, uninterrupted)
  assert_same_params(uninterrupted, workdir)


def test_sampling_and_bits_per_dim_match_one_process(toy_run, tmp_path):
  """sample.py (with the GIF's trajectory) and evaluate_bpd.py on two processes write what one
  process computes with the same seed and batch size."""
  _, workdir = toy_run
  logs = tmp_path / "logs"
  out = str(tmp_path / "samples")
  run_two(logs, "sample.py", f"--workdir={workdir}", "--num_samples=100", f"--out={out}", "--gif")
  run = run_loading.load_run(workdir)
  spec = samplers.spec_from_config(run.config.sampling)
  expected_dir = str(tmp_path / "expected")
  sample_outputs.sample_and_save(
    run, expected_dir, 100, run.config.sampling.batch_size, 0, spec, False
  )
  samples = np.load(os.path.join(out, "samples.npz"))["arr_0"]
  expected = np.load(os.path.join(expected_dir, "samples.npz"))["arr_0"]
  assert samples.shape == (100, 2)
  np.testing.assert_allclose(samples, expected, **OUTPUT_TOLERANCE)
  assert os.path.getsize(os.path.join(out, "reverse.gif")) > 0

  # 40 examples in batches of 16: the last batch is padded, across both processes.
  bpd_out = str(tmp_path / "bpd.json")
  run_two(
    logs,
    "evaluate_bpd.py",
    f"--workdir={workdir}",
    "--num_examples=40",
    "--batch_size=16",
    f"--out={bpd_out}",
  )
  with open(bpd_out) as f:
    result = json.load(f)
  expected = bits_per_dim.evaluate_split(run, "vlb", "train", 16, 40)
  assert result["num_examples"] == expected["num_examples"] == 40
  for key in ("total_bpd", "total_bpd_stderr", "prior_bpd", "terms_bpd"):
    np.testing.assert_allclose(result[key], expected[key], **OUTPUT_TOLERANCE)


def _digits_config():
  """An image run small enough to compile fast: one level, no attention."""
  config = tiny_configs.digits_small(num_train_steps=2)
  config.model.ch_mult = (1,)
  config.model.attn_resolutions = ()
  config.training.sample_every = 0
  config.eval.every_steps = 2
  config.eval.num_samples = 16
  config.eval.steps = 4  # ddim, as configs/digits.py: the same program as evaluate.py's below
  return config


def _random_checkpoint(config, workdir):
  """config.json and a step-0 checkpoint of random NumPy weights: no network init to compile."""
  model = models.create_model(config)
  shape = run_loading.example_shape_for(config)
  shapes = jax.eval_shape(
    lambda k: train_state.create_train_state(config, model, shape, k), jax.random.key(0)
  )
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype), shapes.params
  )
  # Zero step, Adam moments and count: the optimizer state of a fresh run.
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  state = state.replace(params=params, ema_params=jax.tree.map(np.copy, params))
  run_config.save_config(workdir, config)
  ckpt = checkpoints.Checkpointer(workdir)
  ckpt.save(0, state, wait=True)
  ckpt.close()


def test_image_evaluation_in_training_and_evaluate_py_match_one_process(tmp_path):
  """train.py with config.eval.every_steps > 0 on two processes computes and caches the reference
  statistics and logs the scores one process gets from the same params; evaluate.py on two
  processes scores its samples as one process does."""
  config = _digits_config()
  workdir = str(tmp_path / "digits")
  _random_checkpoint(config, workdir)
  # The classifier comes from the session's cache; the reference statistics are computed by the
  # two processes, into a cache of their own.
  net = feature_nets.create_feature_net("digits")
  cache = tmp_path / "cache"
  cache.mkdir()
  shutil.copy(digits_classifier.cache_path(), cache)
  logs = tmp_path / "logs"
  run_two(
    logs,
    "train.py",
    *_cli_flags(config, "configs/digits.py"),
    f"--workdir={workdir}",
    env={"DIFFUSION_JAX_CACHE": str(cache)},
  )
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    [logged] = [r for r in map(json.loads, f) if "eval/fid" in r]
  assert logged["step"] == 2

  # The statistics the two processes wrote equal this process's (from the session cache).
  ref = sample_quality.load_reference(config, net, batch_size=config.sampling.batch_size)
  [written] = os.listdir(cache / "reference_stats")
  two_ref = scores.load_stats(str(cache / "reference_stats" / written))
  np.testing.assert_allclose(two_ref.mu, ref.mu, **OUTPUT_TOLERANCE)
  np.testing.assert_allclose(two_ref.sigma, ref.sigma, **OUTPUT_TOLERANCE)

  # The numbers train.py logged, recomputed in one process from the step-2 checkpoint.
  run = run_loading.load_run(workdir)
  eval_key = jax.random.split(jax.random.key(config.seed), 4)[3]  # as train_and_evaluate
  sched = schedules.schedule_from_config(config.diffusion)
  quick = sample_quality.quick_scores(
    config,
    run.model,
    run.params,
    sched,
    run.example_shape,
    eval_key,
    sharding.data_mesh(),
    net,
    ref,
  )
  for name, value in quick.items():
    np.testing.assert_allclose(logged[f"eval/{name}"], value, **OUTPUT_TOLERANCE)

  flags = [
    "--num_samples=20",
    "--batch_size=8",
    "--sampler=ddim",
    "--steps=4",
    "--metrics=fid,is,kid",
    f"--cache_dir={cache}",
  ]
  outputs = run_two(logs, "evaluate.py", f"--workdir={workdir}", *flags)
  path = outputs[0].strip().splitlines()[-1]
  with open(path) as f:
    results = json.load(f)
  expected_dir = str(tmp_path / "expected")
  shutil.copytree(workdir, expected_dir, ignore=shutil.ignore_patterns("eval"))
  expected, _ = scoring.evaluate_run(
    run_loading.load_run(expected_dir),
    expected_dir,
    samplers.spec_from_config(run.config.sampling, name="ddim", steps=4),
    num_samples=20,
    batch_size=8,
    seed=0,
    use_ema=True,
    metrics=("fid", "is", "kid"),
    net=net,
    ref=ref,
  )
  for name in ("fid", "is", "kid"):
    np.testing.assert_allclose(results[name], expected[name], **OUTPUT_TOLERANCE)


def test_two_processes_build_one_latent_cache_and_train_on_it(tmp_path, autoencoder_dir):
  """Two processes build a latent cache of two shards (one each, by index), equal to one built in
  this process, and train on it."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (latent_cache.SHARD_SIZE + 52, 8, 8), np.uint8)
  np.savez(tmp_path / "images.npz", images=images)
  config = tiny_configs.digits_latent(autoencoder_dir)
  config.data.update(source="npz", path=str(tmp_path / "images.npz"), random_flip=True)
  config.data.latent_cache = str(tmp_path / "cache_two")
  two = str(tmp_path / "two")
  flags = _cli_flags(config, "configs/digits.py")
  run_two(tmp_path / "logs", "train.py", *flags, f"--workdir={two}")
  run = run_loading.load_run(two)
  assert run.step == 2 and checkpoints.tree_is_finite(run.params)

  config.data.latent_cache = str(tmp_path / "cache_one")
  space = latent_space.LatentSpace(*latent_space.frozen_autoencoder(config)[:2], 1.0)
  latent_cache.build(config, space, batch_size=config.training.batch_size)
  shards = ["latents_00000.npy", "latents_00001.npy"]
  assert sorted(os.listdir(tmp_path / "cache_two")) == ["cache.json", *shards]
  for shard in shards:
    np.testing.assert_array_equal(
      np.load(tmp_path / "cache_two" / shard), np.load(tmp_path / "cache_one" / shard)
    )
