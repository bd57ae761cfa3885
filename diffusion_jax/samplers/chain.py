"""The driver every fixed-step sampler runs on: a step function on a time grid, as one lax.scan.

A sampler is a `StepSampler`: a grid of timestep indices times[0] > times[1] > ... > times[S]
(int32 for the discrete samplers, where -1 is clean data; float32 t(s) = s T - 1 for the
continuous-time ones) and `step(carry, k, key)`, which takes the state from times[k] to
times[k + 1]. The carry is (x, aux): x the state, aux whatever the sampler keeps between steps
(DPM-Solver++'s previous x0 prediction). `run_chain` runs the steps from any grid point on (partial
chains start part-way down from a noised image), calls an optional hook after each step (inpainting
puts the known pixels back), records a trajectory when asked, and counts network calls.

Randomness: the step leaving grid point k draws from fold_in(step_key, S - 1 - k), S - 1 - k being
the step's index counted from the clean end (the respaced chain's index of its start); so a partial
chain takes the same noise at each step as the full chain, and the hook gets fold_in of that key.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Carry = tuple[jax.Array, Any]
# hook(x, t, key) -> x, called after each step with the state, the time index it now sits at
# (-1 for clean data) and a key of its own.
Hook = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class StepSampler:
  """A sampler as a step on a time grid.

  Attributes:
    times: [S + 1] timestep indices from the noisiest to the end point, decreasing.
    step: step(carry, k, key) -> carry from times[k] to times[k + 1]; k is a traced int32.
    init_aux: the sampler's own state at the first step it runs, from x.
    nfe_per_step: network calls each step makes.
  """

  times: jax.Array
  step: Callable[[Carry, jax.Array, jax.Array], Carry]
  init_aux: Callable[[jax.Array], Any] = lambda x: ()
  nfe_per_step: int = 1

  @property
  def num_steps(self) -> int:
    return self.times.shape[0] - 1


class ChainResult(NamedTuple):
  x: jax.Array  # the final state
  nfe: jax.Array  # network calls per sample, int32
  trajectory: jax.Array | None  # [F, *x.shape] when recorded


def step_key(step_key_base: jax.Array, num_steps: int, k: jax.Array) -> jax.Array:
  """The key of the step leaving grid point k (see the module docstring)."""
  return jax.random.fold_in(step_key_base, num_steps - 1 - k)


def recorded_steps(num_steps: int, every: int, start_step: int = 0) -> list[int]:
  """Grid steps k >= start_step after which the trajectory keeps the state: those whose index
  from the clean end, S - 1 - k, is a multiple of `every` (so the last step is always kept)."""
  return [k for k in range(start_step, num_steps) if (num_steps - 1 - k) % every == 0]


def num_trajectory_frames(num_steps: int, every: int, start_step: int = 0) -> int:
  """Frames of a recorded trajectory: the start state, then one per `recorded_steps`."""
  return 1 + len(recorded_steps(num_steps, every, start_step))


def run_chain(
  sampler: StepSampler,
  x_start: jax.Array,
  step_key_base: jax.Array,
  *,
  start_step: int = 0,
  hook: Hook | None = None,
  trajectory_every: int = 0,
) -> ChainResult:
  """Runs the sampler's steps start_step, ..., S - 1 from x_start (the state at times[start_step]).

  Args:
    sampler: the steps and their grid.
    x_start: [B, ...] the state at times[start_step]: x_T for a full chain.
    step_key_base: the key the steps' keys are folded from.
    start_step: the first grid step to run (0: the whole chain).
    hook: optional hook(x, t, key) -> x after every step.
    trajectory_every: if > 0, also return the start state and the state after each of
      `recorded_steps(S, trajectory_every, start_step)`.

  Returns:
    ChainResult(x, nfe, trajectory or None).
  """
  num_steps = sampler.num_steps
  if not 0 <= start_step < num_steps:
    raise ValueError(f"start_step must lie in [0, {num_steps}), got {start_step}")
  recorded = recorded_steps(num_steps, trajectory_every, start_step) if trajectory_every else []
  slot_of_step = (
    jnp.zeros((num_steps,), jnp.int32)
    .at[jnp.asarray(recorded, jnp.int32)]
    .set(jnp.arange(1, len(recorded) + 1, dtype=jnp.int32))
  )  # 0: not recorded

  def body(state, k):
    carry, frames = state
    key = step_key(step_key_base, num_steps, k)
    x, aux = sampler.step(carry, k, key)
    if hook is not None:
      x = hook(x, sampler.times[k + 1], jax.random.fold_in(key, 1))
    if frames is not None:
      slot = slot_of_step[k]
      frames = jax.lax.cond(slot > 0, lambda f: f.at[slot].set(x), lambda f: f, frames)
    return ((x, aux), frames), None

  frames = None
  if recorded:
    frames = jnp.zeros((1 + len(recorded), *x_start.shape), x_start.dtype).at[0].set(x_start)
  carry = (x_start, sampler.init_aux(x_start))
  ks = jnp.arange(start_step, num_steps, dtype=jnp.int32)
  ((x, _), frames), _ = jax.lax.scan(body, (carry, frames), ks)
  nfe = jnp.int32(sampler.nfe_per_step * (num_steps - start_step))
  return ChainResult(x, nfe, frames)
