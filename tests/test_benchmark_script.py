"""benchmarks/benchmark.py end to end on the toy config: its tables and their figures."""

import re

from tests.scripts import run_script


def test_benchmark_prints_training_and_sampling_tables_for_several_steps_per_call():
  proc = run_script(
    "benchmarks/benchmark.py",
    "--config=configs/toy2d.py",
    "--batch_size=64",
    "--train_steps=7",  # rounded up to two calls of 5
    "--repeats=2",
    "--config.training.steps_per_call=5",
    "--config.model.hidden_dim=32",
    "--sample_steps=2",
    "--score=false",
    check=True,
  )
  out = proc.stdout
  assert "float32, 1 micro-batches, 5 steps per call" in out, out
  train_row = re.search(r"^\| 64 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", out, re.M)
  compile_s, steps_per_s, images_per_s, _ = map(float, train_row.groups())
  assert compile_s > 0 and steps_per_s > 0
  assert abs(images_per_s - 64 * steps_per_s) <= 0.1 + 1e-3 * images_per_s
  samplers = re.findall(
    r"^\| (ancestral|ddim|dpm_solver\+\+) \| (\d+) \| \d+ \| 2 \| ~[\d.]+ \|", out, re.M
  )
  assert [name for name, _ in samplers] == ["ancestral", "ddim", "dpm_solver++"], out
