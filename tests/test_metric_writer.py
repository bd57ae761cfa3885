"""Tests for diffusion_jax.training.metric_writer: metrics.jsonl and TensorBoard event files."""

import glob
import io
import json
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from diffusion_jax.training import metric_writer


def read_events(logdir) -> list[event_pb2.Event]:
  """Parses every TFRecord of every event file in `logdir`, checking the framing CRCs."""
  events = []
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      header = data[offset : offset + 8]
      (length,) = struct.unpack("<Q", header)
      (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
      record = data[offset + 12 : offset + 12 + length]
      (record_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
      assert header_crc == masked_crc32c(header) and record_crc == masked_crc32c(record)
      events.append(event_pb2.Event.FromString(record))
      offset += 16 + length
  return events


def scalars_in(events) -> list[tuple[int, str, float]]:
  return [
    (e.step, v.tag, v.simple_value)
    for e in events
    for v in e.summary.value
    if v.HasField("simple_value")
  ]


def decode(image) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(image.encoded_image_string)))


def read_jsonl(logdir) -> list[dict]:
  with open(os.path.join(logdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_scalars_go_to_jsonl_and_event_file(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  writer.write_scalars(1, {"loss": np.float32(0.5), "lr": jnp.asarray(2e-4)})
  writer.write_scalars(jnp.asarray(2), {"loss": 0.25})
  writer.close()

  rows = read_jsonl(tmp_path)
  assert rows == [
    {"step": 1, "loss": 0.5, "lr": float(np.float32(2e-4))},
    {"step": 2, "loss": 0.25},
  ]
  assert isinstance(rows[0]["step"], int)
  assert scalars_in(read_events(tmp_path)) == [
    (1, "loss", 0.5),
    (1, "lr", pytest.approx(2e-4)),
    (2, "loss", 0.25),
  ]


def test_resume_appends_to_jsonl(tmp_path):
  for step in (1, 2):
    writer = metric_writer.MetricWriter(str(tmp_path))
    writer.write_scalars(step, {"loss": float(step)})
    writer.close()
  assert read_jsonl(tmp_path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}]
  # Both runs' event files survive, even when started within the same second.
  assert sorted(s for s, _, _ in scalars_in(read_events(tmp_path))) == [1, 2]


def test_images_are_written_as_png_summaries(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  grid = np.arange(6 * 10 * 3, dtype=np.uint8).reshape(6, 10, 3)
  batch = np.full((4, 5, 5, 1), 255, np.uint8)
  writer.write_images(3, {"samples": grid, "batch": batch})
  writer.close()
  images = {
    v.tag: v.image for e in read_events(tmp_path) for v in e.summary.value if v.HasField("image")
  }
  assert images["samples"].height == 6 and images["samples"].width == 10
  np.testing.assert_array_equal(decode(images["samples"]), grid)
  assert images["batch"].height == 5 and images["batch"].width == 20  # tiled side by side
  np.testing.assert_array_equal(decode(images["batch"]), np.full((5, 20, 3), 255, np.uint8))


def test_write_images_rejects_float_images(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  with pytest.raises(ValueError, match="must be uint8"):
    writer.write_images(0, {"x": np.zeros((4, 4, 3), np.float32)})
  writer.close()


def test_disabled_writer_writes_nothing(tmp_path):
  logdir = tmp_path / "logs"
  writer = metric_writer.MetricWriter(str(logdir), enabled=False)
  writer.write_scalars(1, {"loss": 1.0})
  writer.write_images(1, {"x": np.zeros((4, 4, 3), np.uint8)})
  writer.flush()
  writer.close()
  assert not logdir.exists()


def test_a_resumed_run_drops_the_rows_logged_after_its_checkpoint(tmp_path):
  writer = metric_writer.MetricWriter(str(tmp_path))
  for step in (10, 20, 30, 40):
    writer.write_scalars(step, {"loss": step / 10})
  writer.close()
  with open(tmp_path / metric_writer.JSONL_FILENAME, "a") as f:
    f.write('{"step": 50, "lo')  # a kill mid-line
  resumed = metric_writer.MetricWriter(str(tmp_path), resume_step=20)
  for step in (30, 40):
    resumed.write_scalars(step, {"loss": -step / 10})
  resumed.close()
  with open(tmp_path / metric_writer.JSONL_FILENAME) as f:
    rows = [json.loads(line) for line in f]
  assert [(r["step"], r["loss"]) for r in rows] == [(10, 1.0), (20, 2.0), (30, -3.0), (40, -4.0)]
  # TensorBoard is told to discard the older file's events from step 21 on.
  purges = [e for e in read_events(str(tmp_path)) if e.session_log.status == 1]
  assert [e.step for e in purges] == [21]
