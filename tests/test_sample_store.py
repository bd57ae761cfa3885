"""SampleStore: whole shards only, resumption of missing ones, and refusal of other settings."""

import json
import os

import numpy as np
import pytest

from diffusion_jax.evaluation import sample_store

SETTINGS = {"step": 3, "sampler": {"name": "ddim", "steps": 10}, "seed": 0, "batch_size": 4}


def images(index, n=4):
  return np.full((n, 2, 2, 1), index, np.uint8)


def test_shards_round_trip_and_reading_stops_at_num_samples(tmp_path):
  store = sample_store.SampleStore(str(tmp_path / "s"), SETTINGS)
  assert store.missing(3) == [0, 1, 2]
  for i in range(3):
    store.write(i, images(i), nfe=10 + i)
  assert store.missing(3) == []
  batches = list(store.read(10, 3))
  assert [len(b) for b in batches] == [4, 4, 2]
  np.testing.assert_array_equal(np.concatenate(batches)[:, 0, 0, 0], [0] * 4 + [1] * 4 + [2] * 2)
  assert store.mean_nfe(3) == pytest.approx(11.0)
  # Only whole shards and the manifest are left: no temporary files.
  assert sorted(os.listdir(tmp_path / "s")) == [
    "manifest.json",
    "shard_000000.npz",
    "shard_000001.npz",
    "shard_000002.npz",
  ]


def test_reopening_with_the_same_settings_resumes(tmp_path):
  directory = str(tmp_path / "s")
  sample_store.SampleStore(directory, SETTINGS).write(1, images(1), nfe=10)
  reopened = sample_store.SampleStore(directory, json.loads(json.dumps(SETTINGS)))
  assert reopened.missing(3) == [0, 2]


def test_other_settings_are_refused_naming_what_differs(tmp_path):
  directory = str(tmp_path / "s")
  sample_store.SampleStore(directory, SETTINGS)
  with pytest.raises(ValueError, match="seed differ"):
    sample_store.SampleStore(directory, dict(SETTINGS, seed=1))
