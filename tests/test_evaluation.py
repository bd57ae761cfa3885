"""evaluate.py end to end on a tiny digits run, resumption, train.py's quick evaluation, bad input.

The digits classifier is the feature network, so everything runs on a CPU; the scores written are
checked against a recomputation from the stored samples and the cached reference statistics.
"""

import json
import os

import numpy as np
import pytest

from diffusion_jax.metrics import feature_nets, scores
from diffusion_jax.training import loop as train_loop
from tests import tiny_configs
from tests.scripts import assert_fails_cleanly, run_script

EVAL_FLAGS = ["--num_samples=20", "--batch_size=8", "--sampler=ddim", "--steps=4"]


def evaluate(workdir, *flags):
  return run_script("evaluate.py", f"--workdir={workdir}", *flags)


@pytest.fixture(scope="module")
def digits_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("digits"))
  train_loop.train_and_evaluate(tiny_configs.digits_small(num_train_steps=2), workdir)
  return workdir


@pytest.fixture(scope="module")
def first_evaluation(digits_workdir):
  proc = evaluate(digits_workdir, *EVAL_FLAGS, "--metrics=fid,is,kid,bpd", "--bpd_num_examples=8")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout.strip().splitlines()[-1]
  with open(out) as f:
    return out, json.load(f)


def shard_paths(results_path):
  samples = os.path.join(os.path.dirname(results_path), "samples")
  return sorted(os.path.join(samples, n) for n in os.listdir(samples) if n.startswith("shard_"))


def test_results_match_a_recomputation_from_the_stored_samples(first_evaluation):
  out, results = first_evaluation
  assert results["num_samples"] == 20 and results["network_evals_per_sample"] == 4
  assert results["sampler"]["name"] == "ddim" and results["ema"] is True
  paths = shard_paths(out)
  assert len(paths) == 3  # 20 samples in batches of 8
  images = np.concatenate([np.load(p)["images"] for p in paths])[:20]
  assert images.dtype == np.uint8 and images.shape == (20, 8, 8, 1)

  net = feature_nets.create_feature_net("digits")
  assert results["feature_net"] == net.name
  features, logits = feature_nets.compute_features(net, [images])
  cache = os.environ["DIFFUSION_JAX_CACHE"]
  [ref_file] = [
    os.path.join(root, n) for root, _, names in os.walk(cache) for n in names if "train" in n
  ]
  ref = scores.load_stats(ref_file)
  assert len(ref.features) == 1797  # every builtin digit
  mu, sigma = scores.feature_statistics(features)
  fid = scores.frechet_distance(mu, sigma, ref.mu, ref.sigma)
  assert results["fid"] == pytest.approx(fid, rel=1e-9)
  assert results["is"] == pytest.approx(scores.inception_score(logits)[0], rel=1e-9)
  assert results["kid"] == pytest.approx(
    scores.kernel_inception_distance(features, ref.features)[0], rel=1e-9
  )
  # A 2-step model draws noise, not digits: far from the data by every measure.
  assert results["fid"] > 50 and results["is"] < 5
  assert results["bpd"]["num_examples"] == 8 and results["bpd"]["split"] == "train"


def test_a_stopped_evaluation_resumes_with_identical_samples(digits_workdir, first_evaluation):
  out, results = first_evaluation
  paths = shard_paths(out)
  before = [np.load(p)["images"] for p in paths]
  untouched = os.stat(paths[0]).st_mtime_ns
  os.remove(paths[1])  # as if the job had stopped while drawing batch 1

  assert_fails_cleanly(evaluate(digits_workdir, *EVAL_FLAGS, "--metrics=fid,is"), "--overwrite")
  proc = evaluate(digits_workdir, *EVAL_FLAGS, "--metrics=fid,is", "--overwrite")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.stat(paths[0]).st_mtime_ns == untouched  # only the missing shard was drawn
  for path, images in zip(paths, before, strict=True):
    np.testing.assert_array_equal(np.load(path)["images"], images)
  with open(out) as f:
    resumed = json.load(f)
  assert resumed["fid"] == pytest.approx(results["fid"], rel=1e-9)


def test_train_logs_the_quick_evaluation(tmp_path):
  config = tiny_configs.digits_small(num_train_steps=4)
  config.eval.every_steps = 2
  config.eval.num_samples = 16
  config.eval.steps = 3
  train_loop.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  logged = {r["step"]: r for r in records if "eval/fid" in r}
  assert sorted(logged) == [2, 4]
  for record in logged.values():
    assert np.isfinite(record["eval/fid"]) and record["eval/fid"] > 0
    assert 1.0 <= record["eval/is"] <= 10.0
    assert np.isfinite(record["eval/kid"])


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--metrics=fid,sharpness"], "unknown metrics"),
    (["--feature_net=inception", "--inception_weights="], "pt_inception-2015-12-05"),
    (["--num_samples=0"], "flag --num_samples=0: 0 is not a positive integer"),
    (["--ref_split=test"], "has only a train split"),
  ],
)
def test_bad_input_fails_with_one_line(digits_workdir, flags, message):
  assert_fails_cleanly(evaluate(digits_workdir, *EVAL_FLAGS, *flags), message)


def test_2d_runs_are_refused(tmp_path):
  config = tiny_configs.toy(num_train_steps=2)
  config.training.sample_every = 0
  train_loop.train_and_evaluate(config, str(tmp_path))
  assert_fails_cleanly(evaluate(str(tmp_path), *EVAL_FLAGS), "need images")
