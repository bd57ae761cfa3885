"""Where a config stands: training throughput, sampling and scoring speed, printed as Markdown.

python benchmarks/benchmark.py --config=configs/cifar10.py --batch_size=128 --peak_tflops=790
python benchmarks/benchmark.py --config=configs/cifar10.py --config.model.ch=64 --batch_size=8 \\
  --vs_torch --sample=false --score=false        # against diffusers' UNet2DModel, same machine

The process is set up as train.py's: on a CPU, the same devices (--cpu_devices), convolutions and
huge pages (diffusion_jax.cli.cpu_backend, host_memory).
Training runs the jitted train step on synthetic batches of the config's shape (the network's
compute; the input pipeline runs ahead in background threads in train.py). Model TFLOP/s comes
from XLA's cost analysis of the compiled step; MFU divides it by --peak_tflops (the device's
dense peak for the compute dtype). Peak memory is the device's own count where it keeps one (GPUs,
TPUs), else this process's peak resident memory.

Sampling times `--sample_steps` network calls of each sampler at `--sample_batch` and reports the
images/s of its full chain (ancestral 1000 steps, DDIM 50, DPM-Solver++ 20), extrapolated from
the timed steps and marked `~` when fewer than the chain's. Scoring times the FID Inception network
(random weights cost the compute of the real ones) on uint8 images of the config's size.

--vs_torch builds diffusers' UNet2DModel with the same architecture and trains it with Adam (or,
with --torch_update=ours, clipping, Adam and an EMA, as our step does) on a batch of the same
shape in a worker process; the two take turns, `--repeats` times, and the ratio
of their median step times is printed (> 1: JAX is faster). It needs torch and diffusers.
"""

import multiprocessing
import os
import resource
import statistics
import time

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from diffusion_jax import models, samplers, schedules, sharding
from diffusion_jax.cli import cpu_backend, host_memory
from diffusion_jax.cli import flags as cli_flags
from diffusion_jax.evaluation import run_loading
from diffusion_jax.metrics import feature_nets, inception
from diffusion_jax.samplers import generation
from diffusion_jax.training import state as train_state
from diffusion_jax.training.step import make_train_step, make_train_steps

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_BATCH = flags.DEFINE_integer("batch_size", None, "Global training batch (default: the config's).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 10, "Timed train steps per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats; medians are reported.")
_PEAK = flags.DEFINE_float("peak_tflops", None, "The device's peak TFLOP/s, for MFU.")
_SAMPLE = flags.DEFINE_bool("sample", True, "Time the samplers.")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", None, "Sampling batch (default: config's).")
_SAMPLE_STEPS = flags.DEFINE_integer(
  "sample_steps", 10, "Network calls timed per sampler (its full chain when larger)."
)
_SCORE = flags.DEFINE_bool("score", True, "Time the FID Inception network.")
_SCORE_BATCH = flags.DEFINE_integer("score_batch", 64, "Images per Inception batch.")
_VS_TORCH = flags.DEFINE_bool("vs_torch", False, "Time diffusers' UNet2DModel alongside.")
_TORCH_UPDATE = flags.DEFINE_enum(
  "torch_update",
  "adam",
  ["adam", "ours"],
  "The twin's update: Adam alone, or ours (the config's global-norm clipping, Adam, and the EMA "
  "of the parameters).",
)
_CPU_DEVICES = flags.DEFINE_integer(
  "cpu_devices",
  None,
  "CPU devices, as train.py's --cpu_devices (default: as train.py chooses).",
  lower_bound=1,
)
flags.mark_flag_as_required("config")

SAMPLER_CHAINS = (("ancestral", 1000), ("ddim", 50), ("dpm_solver++", 20))


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _peak_memory_gib() -> str:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return f"{stats['peak_bytes_in_use'] / 2**30:.2f}"
  # ru_maxrss is in KiB on Linux: the host process, which is where a CPU device's memory lives.
  return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} (host)"


class _TrainBench:
  """The config's jitted train step on a fixed synthetic batch."""

  def __init__(self, config, batch_size: int):
    self.mesh = sharding.data_mesh()
    self.model = models.create_model(config)
    self.shape = run_loading.example_shape_for(config)
    sched = schedules.schedule_from_config(config.diffusion)
    self.state = jax.jit(
      lambda k: train_state.create_train_state(config, self.model, self.shape, k),
      out_shardings=sharding.replicated(self.mesh),
    )(jax.random.key(0))
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (batch_size, *self.shape)).astype(np.float32)
    self.key = jax.random.key(1)
    # What training runs: on the CPU every step is its own program (make_train_steps).
    if jax.default_backend() == "cpu":
      self.per_call = 1
      self.x0 = sharding.shard_batch(x0, self.mesh)
      steps = make_train_step(config, self.model, sched, self.mesh)
    else:
      self.per_call = config.training.steps_per_call
      x0 = np.broadcast_to(x0, (self.per_call, *x0.shape))  # the same batch for every step
      self.x0 = jax.device_put(x0, sharding.frames_sharding(self.mesh))
      steps = make_train_steps(config, self.model, sched, self.mesh)
    start = time.perf_counter()
    self.compiled = steps.lower(self.state, self.x0, self.key).compile()
    self.compile_s = time.perf_counter() - start
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    # The cost analysis counts a loop's body once, so this is one step's even with a scan of N.
    self.flops = float((cost or {}).get("flops", float("nan")))
    self.num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(self.state.params))

  def whole_calls(self, num_steps: int) -> int:
    """num_steps rounded up to whole calls of training.steps_per_call."""
    return -(-num_steps // self.per_call) * self.per_call

  def run(self, num_steps: int):
    """Runs whole_calls(num_steps) training steps."""
    for _ in range(self.whole_calls(num_steps) // self.per_call):
      self.state, metrics = self.compiled(self.state, self.x0, self.key)
    return metrics


def _sampling_rows(config, bench: _TrainBench) -> list[str]:
  sched = schedules.schedule_from_config(config.diffusion)
  batch = _SAMPLE_BATCH.value or config.sampling.batch_size
  kind = models.parametrization_of(config.model)
  rows = []
  for name, chain_steps in SAMPLER_CHAINS:
    chain_steps = min(chain_steps, sched.num_timesteps)
    timed = min(_SAMPLE_STEPS.value, chain_steps)
    # The timed prefix of a chain costs what its other steps do: one network call each.
    spec = samplers.SamplerSpec(name, steps=timed if timed == chain_steps else None)
    if timed < chain_steps:
      spec = samplers.SamplerSpec(name, timesteps=tuple(range(chain_steps - timed, chain_steps)))
    sample_fn = generation.make_sample_fn(
      bench.model, kind, sched, (batch, *bench.shape), bench.mesh, spec
    )
    draw = lambda f=sample_fn: f(bench.state.ema_params, jax.random.key(2))
    jax.block_until_ready(draw())  # compile
    seconds = _median_seconds(draw, _REPEATS.value)
    per_image = seconds * chain_steps / timed / batch
    mark = "~" if timed < chain_steps else ""
    rows.append(f"| {name} | {chain_steps} | {batch} | {timed} | {mark}{1 / per_image:.1f} |")
  return rows


def _scoring_row(config) -> str:
  size = config.data.image_size
  x = np.zeros((1, inception.INPUT_SIZE, inception.INPUT_SIZE, 3), np.float32)
  variables = jax.jit(inception.InceptionV3().init)(jax.random.key(0), x)
  apply = jax.tree_util.Partial(inception.inception_features, variables)
  net = feature_nets.FeatureNet("inception_random", apply, feature_dim=2048, num_classes=1008)
  mesh = sharding.data_mesh()
  batch = _SCORE_BATCH.value
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  start = time.perf_counter()
  feature_nets.compute_features(net, [images], mesh=mesh)
  compile_s = time.perf_counter() - start
  seconds = _median_seconds(
    lambda: feature_nets.compute_features(net, [images], mesh=mesh), _REPEATS.value
  )
  per_image = seconds / batch
  return f"| {size} | {batch} | {compile_s:.1f} | {1 / per_image:.1f} | {50_000 * per_image:.0f} |"


def _diffusers_twin_kwargs(config) -> dict:
  """diffusers' UNet2DModel arguments for our U-Net's architecture (the released DDPM layout)."""
  m, size = config.model, config.data.image_size
  attn = [size // 2**i in m.attn_resolutions for i in range(len(m.ch_mult))]
  return dict(
    sample_size=size,
    in_channels=config.data.num_channels,
    out_channels=config.data.num_channels,
    block_out_channels=tuple(m.ch * k for k in m.ch_mult),
    layers_per_block=m.num_res_blocks,
    down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
    up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
    attention_head_dim=None,
    norm_num_groups=m.num_groups,
    norm_eps=1e-6,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    dropout=m.dropout,
  )


def _torch_worker(
  conn, twin_kwargs: dict, batch_size: int, learning_rate: float, abar, clip: float, ema: float
) -> None:
  """Trains diffusers' twin with Adam on a fixed batch, with global-norm clipping at `clip` and an
  EMA of decay `ema` where they are nonzero: sends its version and parameter count, then for each
  step count received, the mean seconds per step of that many (0 ends it)."""
  import torch
  from diffusers import UNet2DModel

  model = UNet2DModel(**twin_kwargs).train()
  params = list(model.parameters())
  optimizer = torch.optim.Adam(params, lr=learning_rate)
  ema_params = [p.detach().clone() for p in params]
  channels, size = twin_kwargs["in_channels"], twin_kwargs["sample_size"]
  generator = torch.Generator().manual_seed(0)
  x0 = torch.rand(batch_size, channels, size, size, generator=generator) * 2 - 1
  abar = torch.tensor(abar)

  def torch_step():
    t = torch.randint(0, len(abar), (batch_size,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    a = abar[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    loss = torch.nn.functional.mse_loss(model(x_t, t).sample, noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
      torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    if ema:
      with torch.no_grad():
        torch._foreach_lerp_(ema_params, params, 1 - ema)

  torch_step()  # warm-up (allocations, kernel choice)
  conn.send((torch.__version__, sum(p.numel() for p in model.parameters())))
  while steps := conn.recv():
    torch_step()  # untimed, as each of ours: the first step of a turn wakes the threads
    start = time.perf_counter()
    for _ in range(steps):
      torch_step()
    conn.send((time.perf_counter() - start) / steps)


def _torch_rows(config, bench: _TrainBench, batch_size: int) -> list[str]:
  """Median step times of ours and diffusers' twin, which runs in a worker process. The two take
  turns, each idle while the other is timed (so that neither framework's threads or allocator
  settle how the other runs, and both see the same load when the machine's changes), and each
  turn begins with one untimed step, as a step after a pause runs slower."""
  ctx = multiprocessing.get_context("spawn")
  conn, worker_conn = ctx.Pipe()
  abar = np.asarray(schedules.schedule_from_config(config.diffusion).alphas_cumprod)
  clip, ema = (
    (config.optim.grad_clip, config.training.ema_decay)
    if _TORCH_UPDATE.value == "ours"
    else (0.0, 0.0)
  )
  twin = _diffusers_twin_kwargs(config)
  args = (worker_conn, twin, batch_size, config.optim.learning_rate, abar, clip, ema)
  worker = ctx.Process(target=_torch_worker, args=args, daemon=True)
  worker.start()
  torch_version, num_torch_params = conn.recv()
  steps = bench.whole_calls(_TRAIN_STEPS.value)
  ours, theirs = [], []
  for _ in range(_REPEATS.value):
    jax.block_until_ready(bench.run(1))  # untimed: the first step of a turn wakes the threads
    start = time.perf_counter()
    jax.block_until_ready(bench.run(steps))
    ours.append((time.perf_counter() - start) / steps)
    conn.send(steps)
    theirs.append(conn.recv())
  conn.send(0)
  worker.join()
  ours_ms, theirs_ms = 1000 * statistics.median(ours), 1000 * statistics.median(theirs)
  return [
    f"| JAX (this library) | {bench.num_params:,} | {ours_ms:.0f} | "
    + ", ".join(f"{1000 * s:.0f}" for s in ours)
    + " |",
    f"| PyTorch {torch_version} + diffusers UNet2DModel | {num_torch_params:,} | "
    f"{theirs_ms:.0f} | " + ", ".join(f"{1000 * s:.0f}" for s in theirs) + " |",
    f"| ratio torch / JAX (> 1: JAX faster) | | {theirs_ms / ours_ms:.2f} | |",
  ]


def _cpu_setup() -> str:
  """What the CPU backend runs with (cpu_backend, host_memory); empty on accelerators."""
  if jax.default_backend() != "cpu":
    return ""
  eigen = cpu_backend.EIGEN_CONVOLUTIONS in os.environ.get("XLA_FLAGS", "")
  huge = f"{host_memory.TUNABLE}=1" in os.environ.get("GLIBC_TUNABLES", "")
  pages = "2 MiB" if huge or host_memory.thp_mode() == "always" else "4 KiB"
  return f" ({'Eigen' if eigen else 'YNNPACK'} convolutions, {pages} pages)"


def main(argv):
  del argv
  config = _CONFIG.value
  batch_size = _BATCH.value or config.training.batch_size
  accum = config.training.grad_accum_steps
  cpu_backend.set_up(_CPU_DEVICES.value, cpu_backend.micro_batches_split(batch_size, accum))
  bench = _TrainBench(config, batch_size)
  bench.run(1)  # the first run of a compiled program allocates its buffers
  steps = bench.whole_calls(_TRAIN_STEPS.value)
  seconds = _median_seconds(lambda: bench.run(steps), _REPEATS.value)
  steps_per_s = steps / seconds
  tflops = bench.flops * steps_per_s / 1e12
  mfu = f"{100 * tflops / _PEAK.value:.1f}%" if _PEAK.value else "-"
  device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
  options = (
    f"{config.model.dtype}{', remat' if config.model.remat else ''}, "
    f"{config.training.grad_accum_steps} micro-batches, "
    f"{config.training.steps_per_call} steps per call"
  )
  name = config_flags.get_config_filename(flags.FLAGS["config"])
  print(f"\n{device}{_cpu_setup()}, {name}, {bench.num_params:,} parameters, {options}\n")
  print("| batch | compile s | train steps/s | images/s | model TFLOP/s | MFU | peak memory GiB |")
  print("|---|---|---|---|---|---|---|")
  print(
    f"| {batch_size} | {bench.compile_s:.1f} | {steps_per_s:.2f} | {steps_per_s * batch_size:.1f} "
    f"| {tflops:.3f} | {mfu} | {_peak_memory_gib()} |"
  )
  if _VS_TORCH.value:
    update = "Adam" if _TORCH_UPDATE.value == "adam" else "clipping, Adam, EMA"
    print(f"\n| training step ({update}; same batch) | parameters | median ms | each repeat, ms |")
    print("|---|---|---|---|")
    for row in _torch_rows(config, bench, batch_size):
      print(row)
  if _SAMPLE.value:
    print("\n| sampler | chain steps | batch | timed steps | images/s |")
    print("|---|---|---|---|---|")
    for row in _sampling_rows(config, bench):
      print(row)
  if _SCORE.value:
    print("\n| Inception input size | batch | compile s | images/s | s for 50,000 images |")
    print("|---|---|---|---|---|")
    print(_scoring_row(config))


if __name__ == "__main__":
  cli_flags.run(main)
