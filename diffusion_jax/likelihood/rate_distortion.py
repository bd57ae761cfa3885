"""Progressive lossy compression (DDPM paper, sec. 4.3, Algorithms 3-4, Fig. 5 and Table 4).

A sender transmits x_T, x_{T-1}, ..., x_0 one after another, each coded against the model's
p(x_{t-1} | x_t), so the bits sent up to x_t are L_T + L_{T-1} + ... + L_t of the variational
bound (eq. 5); the receiver's best guess of the data at that point is x0_hat(x_t). The curve is
read from a `vlb.VLBSummary`: after k = T - t reverse steps (paper times, t = T..1)

  rate_k = L_T + sum_{c >= t} L_c (bits/dim),   distortion_k = 127.5 sqrt(E (x0_hat(x_t) - x0)^2),

the root mean squared error on the [0, 255] scale of data in [-1, 1]; after the last, k = T, the
receiver decodes x0 itself: the rate is the whole bound and the distortion 0.
"""

import dataclasses

import numpy as np

from diffusion_jax.likelihood.vlb import VLBSummary

PIXEL_SCALE = 127.5  # [-1, 1] -> [0, 255]


@dataclasses.dataclass(frozen=True)
class RateDistortion:
  """The curve at k = 0..T reverse steps (k = 0: the receiver holds x_T only)."""

  reverse_steps: np.ndarray  # [T + 1] k
  rate_bpd: np.ndarray  # [T + 1] bits per dimension received
  distortion_rmse: np.ndarray  # [T + 1] RMSE of x0_hat, [0, 255] scale

  def as_json(self) -> dict:
    return {name: value.tolist() for name, value in dataclasses.asdict(self).items()}


def rate_distortion(summary: VLBSummary) -> RateDistortion:
  """The rate and distortion after every reverse step, from the bound's terms and x0 errors.

  VLBSummary index c holds L_c (c >= 1; L_0 at c = 0) and the error of x0_hat from paper's
  x_{c+1}; the receiver at paper time t has L_T and L_{T-1}, ..., L_t.
  """
  terms = np.asarray(summary.terms_bpd, np.float64)
  num_timesteps = terms.shape[0]
  # sent[k] = L_{T-1} + ... + L_{T-k}: the terms from the top, accumulated.
  sent = np.concatenate([[0.0], np.cumsum(terms[::-1])])
  rate = summary.prior_bpd + sent
  rmse = PIXEL_SCALE * np.sqrt(np.asarray(summary.x0_mse, np.float64)[::-1])  # k = 0: x_T
  return RateDistortion(
    reverse_steps=np.arange(num_timesteps + 1),
    rate_bpd=rate,
    distortion_rmse=np.concatenate([rmse, [0.0]]),
  )
