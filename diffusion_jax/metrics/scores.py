"""Sample-quality metrics on feature vectors: FID, KID and Inception Score, in float64 NumPy.

The network that produces the features (Inception-v3 pool3, a digits classifier, ...) is elsewhere
(feature_nets.py); everything here takes plain arrays, so it is checked against SciPy and explicit
formulas. Reference statistics are stored as .npz files that also read the TTUR / pytorch-fid
format (arrays `mu` and `sigma`).
"""

import dataclasses
import json
import os
import tempfile

import numpy as np


def feature_statistics(features_NxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and unbiased covariance of feature vectors, as the FID reference code computes them.

  Args:
    features_NxD: N >= 2 feature vectors of dimension D.

  Returns:
    (mu [D], sigma [D, D]) in float64; sigma divides by N - 1 (np.cov with rowvar=False).
  """
  features = np.asarray(features_NxD, dtype=np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"features must be [N, D] with N >= 2, got shape {features.shape}")
  return features.mean(axis=0), np.cov(features, rowvar=False)


class StatsAccumulator:
  """Mean and covariance of features that arrive in batches, without keeping the batches.

  Holds float64 sums of (x - shift) and of their outer products, where `shift` is the first batch's
  mean: shifting keeps sum(x x^T) - N mu mu^T from cancelling catastrophically when the mean is
  large next to the spread. Memory is O(D^2) whatever N is.
  """

  def __init__(self):
    self._count = 0
    self._shift = self._sum = self._sum_outer = None

  @property
  def count(self) -> int:
    return self._count

  def add(self, features_BxD: np.ndarray) -> None:
    """Adds a batch of feature vectors [B, D]; D must stay the same between batches."""
    features = np.asarray(features_BxD, dtype=np.float64)
    if features.ndim != 2:
      raise ValueError(f"features must be [B, D], got shape {features.shape}")
    if not len(features):
      return
    if self._shift is None:
      self._shift = features.mean(axis=0)
      self._sum = np.zeros_like(self._shift)
      self._sum_outer = np.zeros((len(self._shift), len(self._shift)))
    elif features.shape[1] != len(self._shift):
      raise ValueError(f"feature dimension changed from {len(self._shift)} to {features.shape[1]}")
    centred = features - self._shift
    self._sum += centred.sum(axis=0)
    self._sum_outer += centred.T @ centred
    self._count += len(features)

  def result(self) -> tuple[np.ndarray, np.ndarray]:
    """Returns (mu [D], sigma [D, D]) equal to feature_statistics of all batches concatenated."""
    if self._count < 2:
      raise ValueError(f"need at least 2 feature vectors for a covariance, got {self._count}")
    mean_centred = self._sum / self._count
    sigma = (self._sum_outer - self._count * np.outer(mean_centred, mean_centred)) / (
      self._count - 1
    )
    return self._shift + mean_centred, sigma


def _symmetric_factor(sigma: np.ndarray) -> np.ndarray:
  """A matrix A with A A^T = sigma, for symmetric PSD sigma.

  The Cholesky factor when sigma is numerically positive definite (fast: no eigenvectors);
  otherwise the principal square root by eigh, with eigenvalues below 0 (rounding) set to 0.
  """
  try:
    return np.linalg.cholesky(sigma)
  except np.linalg.LinAlgError:
    eigvals, eigvecs = np.linalg.eigh(sigma)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0, None))) @ eigvecs.T


def frechet_distance(
  mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (the FID of Heusel et al. 2017).

  d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}).

  Args:
    mu1: mean [D].
    sigma1: covariance [D, D], symmetric positive semi-definite.
    mu2: mean [D].
    sigma2: covariance [D, D].

  Returns:
    The squared distance d^2 (what FID reports), as a Python float.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  dim = len(mu1) if mu1.ndim == 1 else -1
  if (mu2.shape, sigma1.shape, sigma2.shape) != ((dim,), (dim, dim), (dim, dim)):
    raise ValueError(
      f"frechet_distance needs mu [D] and sigma [D, D] of one D; got mu1 {mu1.shape}, sigma1 "
      f"{sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}"
    )
  # eigh reads one triangle only; average the two so rounding asymmetry in sigma cannot bias it.
  sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
  # tr((S1 S2)^{1/2}) = tr((A^T S2 A)^{1/2}) for any A with A A^T = S1 (A = S1^{1/2} gives the
  # familiar S1^{1/2} S2 S1^{1/2}): S1 S2 = A (A^T S2) and M = (A^T S2) A have the same eigenvalues
  # (XY and YX always do), and M is symmetric PSD, so they are real and >= 0. The principal square
  # root of S1 S2 has their square roots as eigenvalues, so its trace is sum_i sqrt(lambda_i(M)).
  # This needs only symmetric factorizations (no general sqrtm, no complex parts) and also holds
  # for singular covariances; eigenvalues below 0 are rounding and are set to 0.
  factor = _symmetric_factor(sigma1)
  m = factor.T @ sigma2 @ factor
  tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def _polynomial_kernel(x_AxD: np.ndarray, y_BxD: np.ndarray) -> np.ndarray:
  """k(x, y) = (x.y / D + 1)^3, the KID kernel of Binkowski et al. (2018)."""
  return (x_AxD @ y_BxD.T / x_AxD.shape[1] + 1) ** 3


def _mmd2_unbiased(x_MxD: np.ndarray, y_MxD: np.ndarray) -> float:
  """Unbiased MMD^2 of two equal-size sets: the within-set means skip the diagonal i = j."""
  m = len(x_MxD)
  k_xx, k_yy = _polynomial_kernel(x_MxD, x_MxD), _polynomial_kernel(y_MxD, y_MxD)
  k_xy = _polynomial_kernel(x_MxD, y_MxD)
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2 * k_xy.mean())


def kernel_inception_distance(
  features1: np.ndarray,
  features2: np.ndarray,
  num_subsets: int = 100,
  subset_size: int = 1000,
  seed: int = 0,
) -> tuple[float, float]:
  """Kernel Inception Distance: the unbiased MMD^2 with a cubic polynomial kernel.

  Averaged over `num_subsets` pairs of random subsets (Binkowski et al. 2018); each subset is drawn
  without replacement, independently of the others.

  Args:
    features1: [N1, D] features of one set.
    features2: [N2, D] features of the other.
    num_subsets: number of subset pairs.
    subset_size: examples per subset, capped at min(N1, N2) (so small sets use all their examples
      in every subset, in a random order, and the estimate has no spread).
    seed: seeds the subset draws.

  Returns:
    (mean, standard deviation) of MMD^2 over the subsets.
  """
  features1 = np.asarray(features1, dtype=np.float64)
  features2 = np.asarray(features2, dtype=np.float64)
  if features1.ndim != 2 or features2.ndim != 2 or features1.shape[1] != features2.shape[1]:
    raise ValueError(
      f"KID needs features [N1, D] and [N2, D] of one D, got {features1.shape} and "
      f"{features2.shape}"
    )
  size = min(subset_size, len(features1), len(features2))
  if size < 2 or num_subsets < 1:
    raise ValueError(f"KID needs subset_size >= 2 and num_subsets >= 1, got {size}, {num_subsets}")
  rng = np.random.default_rng(seed)
  mmds = [
    _mmd2_unbiased(
      features1[rng.choice(len(features1), size, replace=False)],
      features2[rng.choice(len(features2), size, replace=False)],
    )
    for _ in range(num_subsets)
  ]
  return float(np.mean(mmds)), float(np.std(mmds))


def inception_score(logits_NxK: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
  """Inception Score exp(E_x KL(p(y|x) || p(y))) of Salimans et al. (2016).

  As in the original code, the N examples are cut into `num_splits` consecutive chunks, p(y) is the
  mean prediction within a chunk, and the score is computed per chunk.

  Args:
    logits_NxK: classifier logits; p(y|x) is their softmax, computed in float64.
    num_splits: number of chunks, at most N.

  Returns:
    (mean, standard deviation) of the per-chunk scores.
  """
  logits = np.asarray(logits_NxK, dtype=np.float64)
  if logits.ndim != 2 or not 1 <= num_splits <= len(logits):
    raise ValueError(
      f"inception_score needs logits [N, K] with N >= num_splits >= 1, got shape {logits.shape} "
      f"and num_splits {num_splits}"
    )
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  n = len(log_p)
  scores = []
  for i in range(num_splits):
    part = log_p[i * n // num_splits : (i + 1) * n // num_splits]
    log_p_y = np.log(np.exp(part).mean(axis=0))
    kl = (np.exp(part) * (part - log_p_y)).sum(axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def default_cache_dir(cache_dir: str = "") -> str:
  """Where derived files (reference statistics, the digits classifier) are cached.

  Args:
    cache_dir: used when non-empty.

  Returns:
    cache_dir, else $DIFFUSION_JAX_CACHE, else ~/.cache/diffusion_jax.
  """
  return os.path.expanduser(
    cache_dir or os.environ.get("DIFFUSION_JAX_CACHE") or "~/.cache/diffusion_jax"
  )


def write_npz_atomically(path: str, arrays: dict[str, np.ndarray], overwrite: bool) -> None:
  """Writes an uncompressed .npz through a temporary file and os.replace.

  A write that is interrupted leaves at most a stray temporary file, never a truncated `path`.

  Args:
    path: the output file, written exactly under this name; parent directories are created.
    arrays: name -> array.
    overwrite: replace an existing file; when False an existing file raises ValueError.
  """
  if os.path.exists(path) and not overwrite:
    raise ValueError(f"{path} exists; pass overwrite=True or choose another path")
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as f:
    try:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    except BaseException:
      os.unlink(f.name)
      raise
  os.replace(f.name, path)


@dataclasses.dataclass(frozen=True)
class ReferenceStats:
  """Feature statistics of a set of images, as stored in a stats file."""

  mu: np.ndarray  # float64 [D]
  sigma: np.ndarray  # float64 [D, D]
  features: np.ndarray | None  # float32 [N, D], or None for mu/sigma-only files
  metadata: dict  # JSON-compatible description: feature net, data, number of images, ...
  path: str = ""  # the file it was loaded from, if any

  def require_features(self, metric: str = "KID") -> np.ndarray:
    """Returns the stored features, or raises a ValueError naming the metric that needs them."""
    if self.features is None:
      where = f"{self.path} holds" if self.path else "these statistics hold"
      raise ValueError(
        f"{metric} needs the reference features, but {where} only mu and sigma (e.g. a TTUR / "
        "pytorch-fid file); recompute the reference statistics from the data to get them"
      )
    return self.features


def save_stats(
  path: str,
  mu: np.ndarray,
  sigma: np.ndarray,
  features: np.ndarray | None = None,
  *,
  metadata: dict | None = None,
  overwrite: bool = False,
) -> None:
  """Writes statistics as an .npz readable by TTUR / pytorch-fid (arrays `mu` and `sigma`).

  Args:
    path: the output file (atomically written; an existing one raises unless overwrite=True).
    mu: mean [D].
    sigma: covariance [D, D].
    features: optional features [N, D], stored as float32 (KID needs them).
    metadata: JSON-serializable fields stored alongside, returned by load_stats.
    overwrite: replace an existing file.
  """
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
    raise ValueError(f"stats need mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
  arrays = dict(mu=mu, sigma=sigma, metadata=np.array(json.dumps(metadata or {}, sort_keys=True)))
  if features is not None:
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or features.shape[1] != len(mu):
      raise ValueError(f"features must be [N, {len(mu)}], got shape {features.shape}")
    arrays["features"] = features
  write_npz_atomically(path, arrays, overwrite)


def load_stats(path: str) -> ReferenceStats:
  """Reads a file written by save_stats, or a TTUR / pytorch-fid .npz with `mu` and `sigma`.

  Args:
    path: the .npz file.

  Returns:
    ReferenceStats with float64 mu and sigma; features and metadata are None / {} when absent.
  """
  try:
    archive = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read statistics file {path!r}: {e}") from e
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise ValueError(f"{path!r} is not an .npz archive")
  with archive:
    if not {"mu", "sigma"} <= set(archive.files):
      raise ValueError(f"{path!r} has arrays {archive.files}; statistics need 'mu' and 'sigma'")
    try:
      mu, sigma = archive["mu"].astype(np.float64), archive["sigma"].astype(np.float64)
      features = archive["features"] if "features" in archive.files else None
      metadata = json.loads(str(archive["metadata"])) if "metadata" in archive.files else {}
    except ValueError as e:  # e.g. an object array, which only unpickling could build
      raise ValueError(f"cannot read statistics file {path!r}: {e}") from e
  if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
    raise ValueError(f"{path!r} has mu {mu.shape} and sigma {sigma.shape}; need [D] and [D, D]")
  return ReferenceStats(mu, sigma, features, metadata, path)
