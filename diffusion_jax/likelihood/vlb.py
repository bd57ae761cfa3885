"""The DDPM variational bound on the negative log-likelihood (eq. 5), in bits per dimension, for
every timestep of a batch and averaged over a dataset.

L = L_T + sum_t L_{t-1} + L_0 (see `variational_bound`), each term with its own draw x_t ~ q(x_t |
x0), so L is an unbiased one-sample estimate of E_q[L]. Bits per dimension are nats / (D ln 2), D
the data's dimension.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from diffusion_jax import diffusion, parametrization, sharding, variational_bound
from diffusion_jax.schedules import Schedule


@flax.struct.dataclass
class VLBTerms:
  """The bound's terms per example, in bits per dimension; total = L_T + sum_t L_{t-1} + L_0."""

  prior_bpd: jax.Array  # [B], L_T
  terms_bpd: jax.Array  # [B, T]: index 0 is L_0, index t >= 1 is L_t (the KL at paper step t+1)
  total_bpd: jax.Array  # [B]
  x0_mse: jax.Array  # [B, T]: mean over dimensions of (x0_hat(x_t) - x0)^2 for the term's x_t


def vlb_terms(
  model: parametrization.Denoiser | parametrization.Network,
  sched: Schedule,
  x0: jax.Array,
  key: jax.Array,
  *,
  variance: str | None = None,
  clip_x0: bool = False,
  decoder: str | None = None,
) -> VLBTerms:
  """Every term of the variational bound (eq. 5) per example, the T network calls in one lax.map.

  Args:
    model: a `parametrization.Denoiser`, or a plain eps_fn(x_t, t).
    sched: the schedule the model was trained with.
    x0: data [B, ...]; on the 8-bit grid in [-1, 1] for the discretized decoder.
    key: PRNG key; the term at index t draws x_t ~ q(x_t | x0) from fold_in(key, t).
    variance: the reverse variance, `fixedlarge`, `fixedsmall` or `learned`; None: learned for a
      denoiser with a learned variance, else fixedlarge.
    clip_x0: clip the predicted x0 to [-1, 1] inside p(x_{t-1} | x_t), as when sampling.
    decoder: `discretized` (eq. 13, for 8-bit data: the bound is on a probability) or `gaussian`
      (a density, for continuous data); None: discretized for images [B, H, W, C], gaussian for
      vectors.

  Returns:
    VLBTerms with prior_bpd [B], terms_bpd [B, T], total_bpd [B] and x0_mse [B, T].
  """
  denoiser = parametrization.as_denoiser(model)
  variance = variance or ("learned" if denoiser.learned_variance else "fixedlarge")
  decoder = decoder or variational_bound.default_decoder(x0)
  if decoder not in variational_bound.DECODERS:
    raise ValueError(
      f"unknown decoder {decoder!r}; choose one of {', '.join(variational_bound.DECODERS)}"
    )
  batch = x0.shape[0]
  num_dims = math.prod(x0.shape[1:])

  def term(t: jax.Array) -> tuple[jax.Array, jax.Array]:
    t_B = jnp.full((batch,), t, jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(key, t), x0.shape, x0.dtype)
    denoised = denoiser(sched, diffusion.q_sample(sched, x0, t_B, noise), t_B)
    if clip_x0:
      denoised = denoised.clip_x0()
    nats = variational_bound.term(sched, denoised, x0, t_B, variance=variance, decoder=decoder)
    return nats, jnp.square(denoised.x0 - x0).reshape(batch, -1).mean(axis=1)

  terms_TB, x0_mse_TB = jax.lax.map(term, jnp.arange(sched.num_timesteps, dtype=jnp.int32))
  terms_BT = terms_TB.T
  prior_B = variational_bound.prior_term(sched, x0)  # L_T, eq. 5
  return VLBTerms(
    prior_bpd=variational_bound.nats_to_bpd(prior_B, num_dims),
    terms_bpd=variational_bound.nats_to_bpd(terms_BT, num_dims),
    total_bpd=variational_bound.nats_to_bpd(prior_B + terms_BT.sum(axis=1), num_dims),
    x0_mse=x0_mse_TB.T,
  )


@dataclasses.dataclass(frozen=True)
class VLBSummary:
  """Means over the evaluated examples, in bits per dimension."""

  total_bpd: float  # the bound on -log p(x0) / (D ln 2)
  total_bpd_stderr: float  # standard error of that mean over examples
  prior_bpd: float  # L_T
  terms_bpd: np.ndarray  # [T], index t as in VLBTerms
  x0_mse: np.ndarray  # [T], as in VLBTerms
  num_examples: int
  num_network_evals: int  # T per example


@functools.partial(jax.jit, static_argnames=("denoiser_of", "variance", "clip_x0", "decoder"))
def _batch_terms(params, sched, x0, key, *, denoiser_of, variance, clip_x0, decoder):
  return vlb_terms(
    denoiser_of(params), sched, x0, key, variance=variance, clip_x0=clip_x0, decoder=decoder
  )


def evaluate_vlb(
  denoiser_of: Callable[[Any], parametrization.Denoiser],
  params: Any,
  sched: Schedule,
  batches: Iterable[np.ndarray],
  key: jax.Array,
  *,
  variance: str | None = None,
  clip_x0: bool = False,
  decoder: str | None = None,
  num_examples: int | None = None,
  mesh=None,
  progress: bool = True,
) -> VLBSummary:
  """Averages the bound over a dataset; batch i uses fold_in(key, i).

  With several processes, every process passes the same batches: each batch is split over the
  devices of all of them, and every process returns the same summary.

  Args:
    denoiser_of: params -> the model as a Denoiser (a static argument of jit).
    params: its parameters.
    sched: the schedule it was trained with.
    batches: data batches [<= B, ...]; each is padded to a multiple of the device count.
    key: PRNG key.
    variance: reverse variance, as in vlb_terms.
    clip_x0: as in vlb_terms.
    decoder: as in vlb_terms.
    num_examples: stop after this many examples (default: all of `batches`).
    mesh: the ('data',) mesh to split batches over (default: every device).
    progress: show a progress bar.

  Returns:
    VLBSummary of means over the examples evaluated.
  """
  mesh = mesh or sharding.data_mesh()
  fn = functools.partial(
    _batch_terms, denoiser_of=denoiser_of, variance=variance, clip_x0=clip_x0, decoder=decoder
  )
  num_timesteps = sched.num_timesteps
  seen, padded = 0, 0
  total_sum, total_sq, prior_sum = 0.0, 0.0, 0.0
  terms_sum, x0_mse_sum = np.zeros(num_timesteps), np.zeros(num_timesteps)
  bar = tqdm.tqdm(total=num_examples, desc="vlb", unit="example", disable=not progress)
  for i, batch in enumerate(batches):
    batch = batch if num_examples is None else batch[: num_examples - seen]
    n = len(batch)
    if n == 0:
      break
    # Padding to the largest batch so far keeps one compilation for a shorter last batch.
    padded = max(padded, -(-n // mesh.size) * mesh.size)
    x0 = np.concatenate([batch, np.repeat(batch[-1:], padded - n, axis=0)])
    terms = sharding.to_host(
      fn(params, sched, sharding.shard_global_batch(x0, mesh), jax.random.fold_in(key, i))
    )
    total = np.asarray(terms.total_bpd[:n], np.float64)
    total_sum += total.sum()
    total_sq += np.square(total).sum()
    prior_sum += np.asarray(terms.prior_bpd[:n], np.float64).sum()
    terms_sum += np.asarray(terms.terms_bpd[:n], np.float64).sum(axis=0)
    x0_mse_sum += np.asarray(terms.x0_mse[:n], np.float64).sum(axis=0)
    seen += n
    bar.update(n)
    bar.set_postfix(bpd=f"{total_sum / seen:.4f}")
  bar.close()
  if seen == 0:
    raise ValueError("no examples to evaluate")
  mean = float(total_sum / seen)
  variance_of_mean = max(float(total_sq / seen) - mean**2, 0.0) / max(seen - 1, 1)
  return VLBSummary(
    total_bpd=mean,
    total_bpd_stderr=math.sqrt(variance_of_mean),
    prior_bpd=float(prior_sum / seen),
    terms_bpd=terms_sum / seen,
    x0_mse=x0_mse_sum / seen,
    num_examples=seen,
    num_network_evals=seen * num_timesteps,
  )
