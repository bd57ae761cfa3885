"""FID, KID and IS against SciPy, explicit loops and closed forms; statistics files."""

import os
import warnings

import numpy as np
import pytest
from scipy import linalg, special

from diffusion_jax.metrics import scores


def _pytorch_fid_reference(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """The FID formula as pytorch-fid writes it: scipy.linalg.sqrtm of the product S1 S2."""
  diff = mu1 - mu2
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # sqrtm warns on (near) singular products
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
      offset = np.eye(sigma1.shape[0]) * eps
      covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  covmean = covmean.real
  return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def _random_stats(rng, num, dim, scale):
  features = rng.standard_normal((num, dim)) @ (scale * rng.standard_normal((dim, dim)))
  return scores.feature_statistics(features + rng.standard_normal(dim))


# num < dim makes the covariances rank deficient, as for FID on fewer images than features.
@pytest.mark.parametrize("dim, num", [(8, 100), (64, 500), (64, 40), (512, 2000), (512, 300)])
def test_frechet_distance_matches_scipy_sqrtm(dim, num):
  rng = np.random.default_rng(dim + num)
  mu1, sigma1 = _random_stats(rng, num, dim, 0.3)
  mu2, sigma2 = _random_stats(rng, num, dim, 0.25)
  expected = _pytorch_fid_reference(mu1, sigma1, mu2, sigma2)
  np.testing.assert_allclose(scores.frechet_distance(mu1, sigma1, mu2, sigma2), expected, rtol=1e-6)


def test_frechet_distance_of_identical_gaussians_is_zero():
  rng = np.random.default_rng(0)
  mu, sigma = _random_stats(rng, 500, 64, 1.0)
  assert abs(scores.frechet_distance(mu, sigma, mu, sigma)) < 1e-9


def test_frechet_distance_of_diagonal_covariances_has_closed_form():
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.standard_normal((2, 50))
  a, b = rng.uniform(0.0, 3.0, (2, 50))
  a[:5] = 0  # singular covariances too
  expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
  got = scores.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_frechet_distance_of_commuting_covariances_at_inception_width():
  """S1 = Q diag(a) Q^T and S2 = Q diag(b) Q^T commute, so d^2 = sum (sqrt a - sqrt b)^2 + ..."""
  dim = 2048
  rng = np.random.default_rng(2)
  q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
  a, b = rng.uniform(0.01, 2.0, (2, dim))
  mu1, mu2 = rng.standard_normal((2, dim))
  got = scores.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
  expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
  np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_frechet_distance_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match=r"mu \[D\] and sigma \[D, D\] of one D"):
    scores.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_stats_accumulator_equals_feature_statistics():
  rng = np.random.default_rng(3)
  # A mean far from zero next to the spread: the naive sum-of-squares formula would lose digits.
  batches = [1000 + rng.standard_normal((n, 6)).astype(np.float32) for n in (1, 5, 37, 2)]
  accumulator = scores.StatsAccumulator()
  for batch in batches:
    accumulator.add(batch)
  everything = np.concatenate(batches).astype(np.float64)
  mu, sigma = accumulator.result()
  np.testing.assert_allclose(mu, everything.mean(axis=0), rtol=1e-14)
  np.testing.assert_allclose(sigma, np.cov(everything, rowvar=False), rtol=1e-9, atol=1e-12)
  expected_mu, expected_sigma = scores.feature_statistics(everything)
  np.testing.assert_allclose(mu, expected_mu, rtol=1e-14)
  np.testing.assert_allclose(sigma, expected_sigma, rtol=1e-9, atol=1e-12)
  assert accumulator.count == len(everything)


def _mmd2_double_loop(x, y):
  """The unbiased MMD^2 estimator written out term by term."""
  k = lambda a, b: (np.dot(a, b) / len(a) + 1) ** 3
  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return xx + yy - 2 * xy


def test_kid_equals_explicit_estimator_on_whole_sets():
  rng = np.random.default_rng(4)
  x, y = rng.standard_normal((7, 3)), rng.standard_normal((7, 3)) + 0.3
  # subset_size is capped at 7: every subset is a whole set in some order, so no spread.
  mean, std = scores.kernel_inception_distance(x, y, num_subsets=3, subset_size=100)
  np.testing.assert_allclose(mean, _mmd2_double_loop(x, y), rtol=1e-12)
  assert std < 1e-12


def test_kid_over_subsets_averages_to_the_whole_set_estimate():
  """Random subsets of the sets give an unbiased estimate of the whole-set U-statistic."""
  rng = np.random.default_rng(5)
  x, y = rng.standard_normal((30, 4)), rng.standard_normal((40, 4)) + 0.5
  num_subsets = 400
  mean, std = scores.kernel_inception_distance(
    x, y, num_subsets=num_subsets, subset_size=10, seed=1
  )
  assert std > 0
  assert abs(mean - _mmd2_double_loop(x, y)) < 4 * std / np.sqrt(num_subsets)


def test_kid_near_zero_for_one_distribution_and_positive_for_shifted():
  rng = np.random.default_rng(6)
  x, y = rng.standard_normal((2, 1000, 16))
  kid_same, std_same = scores.kernel_inception_distance(x, y, 20, 200)
  kid_shift, std_shift = scores.kernel_inception_distance(x, y + 0.5, 20, 200)
  assert abs(kid_same) < 4 * std_same / np.sqrt(20)
  assert kid_shift > 20 * std_shift / np.sqrt(20)
  assert kid_shift > 50 * abs(kid_same)


def test_inception_score_of_uniform_predictions_is_one():
  mean, std = scores.inception_score(np.zeros((50, 10)), num_splits=5)
  assert abs(mean - 1) < 1e-12 and std < 1e-12


def test_inception_score_of_confident_balanced_predictions_is_num_classes():
  k = 7
  labels = np.tile(np.arange(k), 10 * 3)  # each of 10 splits holds every class 3 times
  mean, std = scores.inception_score(100 * np.eye(k)[labels], num_splits=10)
  np.testing.assert_allclose(mean, k, rtol=1e-9)
  assert std < 1e-9


def test_inception_score_matches_explicit_formula():
  rng = np.random.default_rng(7)
  logits = 3 * rng.standard_normal((103, 5))  # 103 = uneven splits: 10 or 11 examples
  per_split = []
  n = len(logits)
  for i in range(10):  # the split bounds of Salimans et al.'s code: i * N // splits
    p = special.softmax(logits[i * n // 10 : (i + 1) * n // 10], axis=1)
    p_y = p.mean(axis=0)
    kl = [np.sum(p_i * np.log(p_i / p_y)) for p_i in p]
    per_split.append(np.exp(np.mean(kl)))
  mean, std = scores.inception_score(logits, num_splits=10)
  np.testing.assert_allclose([mean, std], [np.mean(per_split), np.std(per_split)], rtol=1e-12)


def test_inception_score_rejects_more_splits_than_examples():
  with pytest.raises(ValueError, match="N >= num_splits"):
    scores.inception_score(np.zeros((5, 3)), num_splits=10)


def test_stats_file_round_trip(tmp_path):
  rng = np.random.default_rng(8)
  features = rng.standard_normal((20, 4)).astype(np.float32)
  mu, sigma = scores.feature_statistics(features)
  path = str(tmp_path / "stats.npz")
  metadata = {"net": "digits_classifier", "num_examples": 20}
  scores.save_stats(path, mu, sigma, features, metadata=metadata)
  stats = scores.load_stats(path)
  np.testing.assert_array_equal(stats.mu, mu)
  np.testing.assert_array_equal(stats.sigma, sigma)
  np.testing.assert_array_equal(stats.require_features(), features)
  assert stats.metadata == {"net": "digits_classifier", "num_examples": 20}
  assert os.listdir(tmp_path) == ["stats.npz"]  # no temporary file left behind


def test_ttur_style_stats_without_features_load(tmp_path):
  rng = np.random.default_rng(9)
  mu, sigma = rng.standard_normal(5).astype(np.float32), np.eye(5, dtype=np.float32)
  path = str(tmp_path / "fid_stats_cifar10_train.npz")
  np.savez(path, mu=mu, sigma=sigma)
  stats = scores.load_stats(path)
  assert stats.mu.dtype == np.float64 and stats.features is None and stats.metadata == {}
  np.testing.assert_array_equal(stats.mu, mu)
  with pytest.raises(
    ValueError, match="KID needs the reference features, but .* only mu and sigma"
  ):
    stats.require_features()


class _MakesDir:
  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.mkdir, (self.marker,))


def test_stats_object_arrays_are_not_unpickled(tmp_path):
  marker = tmp_path / "marker"
  path = str(tmp_path / "evil.npz")
  np.savez(path, mu=np.array([_MakesDir(marker)], dtype=object), sigma=np.eye(1))
  with pytest.raises(ValueError, match="cannot read statistics file .*evil.npz.*allow_pickle"):
    scores.load_stats(path)
  assert not marker.exists()


def test_stats_files_are_not_overwritten_silently(tmp_path):
  path = str(tmp_path / "stats.npz")
  scores.save_stats(path, np.zeros(2), np.eye(2), metadata={"tag": "first"})
  with pytest.raises(ValueError, match="exists; pass overwrite=True"):
    scores.save_stats(path, np.ones(2), np.eye(2), metadata={"tag": "second"})
  assert scores.load_stats(path).metadata == {"tag": "first"}
  scores.save_stats(path, np.ones(2), np.eye(2), overwrite=True, metadata={"tag": "second"})
  assert scores.load_stats(path).metadata == {"tag": "second"}


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
  path = str(tmp_path / "stats.npz")
  scores.save_stats(path, np.zeros(2), np.eye(2), metadata={"tag": "old"})

  def fail(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(np, "savez", fail)
  with pytest.raises(KeyboardInterrupt):
    scores.save_stats(path, np.ones(2), np.eye(2), overwrite=True, metadata={"tag": "new"})
  monkeypatch.undo()
  assert scores.load_stats(path).metadata == {"tag": "old"}
  assert os.listdir(tmp_path) == ["stats.npz"]


def test_load_stats_rejects_files_without_mu_and_sigma(tmp_path):
  path = str(tmp_path / "samples.npz")
  np.savez(path, arr_0=np.zeros((2, 8, 8, 1), np.uint8))
  with pytest.raises(ValueError, match="statistics need 'mu' and 'sigma'"):
    scores.load_stats(path)
