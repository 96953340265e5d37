"""Metrics out without TensorFlow: event files read back, progress lines, no TF imported."""

import glob
import logging
import os
import struct
import subprocess
import sys
import types

import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.proto import plugin_hparams_pb2
import tensorflow_datasets as tfds

from sjepa_jax import images
from sjepa_jax import metrics_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def masked_crc32c(data: bytes) -> int:
  """TFRecord's checksum, written out here so the check does not trust the writer's own."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path: str) -> list[event_pb2.Event]:
  """The events of a TFRecord event file (what TensorBoard reads), checksums checked."""
  events = []
  with open(path, "rb") as f:
    while header := f.read(12):
      length, length_crc = struct.unpack("<QI", header)
      assert length_crc == masked_crc32c(header[:8])
      data = f.read(length)
      assert struct.unpack("<I", f.read(4))[0] == masked_crc32c(data)
      events.append(event_pb2.Event.FromString(data))
  return events


def scalars_by_tag(events) -> dict[str, list[tuple[int, float]]]:
  out = {}
  for e in events:
    for v in e.summary.value:
      if v.HasField("simple_value"):
        out.setdefault(v.tag, []).append((e.step, v.simple_value))
  return out


def test_event_file_holds_the_tags_values_and_hparams(tmp_path):
  with metrics_io.MetricWriter(str(tmp_path)) as writer:
    writer.write_hparams({"model.dim": 128, "model.encoder": "mixer", "optim.lr": 1e-3})
    writer.write_scalars(100, {"train/agent_forest/loss": 0.5, "align/mountain_to_forest/cka":
                               0.25})
    writer.write_scalars(200, {"train/agent_forest/loss": 0.125})
  files = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  assert len(files) == 1  # one file: hyperparameters beside the scalars, not a sub-run
  events = read_events(files[0])
  assert events[0].file_version == "brain.Event:2"
  assert scalars_by_tag(events) == {"train/agent_forest/loss": [(100, 0.5), (200, 0.125)],
                                    "align/mountain_to_forest/cka": [(100, 0.25)]}
  start = [v for e in events for v in e.summary.value
           if v.tag == "_hparams_/session_start_info"]
  assert len(start) == 1 and start[0].metadata.plugin_data.plugin_name == "hparams"
  hparams = plugin_hparams_pb2.HParamsPluginData.FromString(
      start[0].metadata.plugin_data.content).session_start_info.hparams
  assert hparams["model.dim"].number_value == 128
  assert hparams["model.encoder"].string_value == "mixer"


def test_a_disabled_writer_writes_nothing(tmp_path):
  with metrics_io.MetricWriter(str(tmp_path / "other"), enabled=False) as writer:
    writer.write_hparams({"a": 1})
    writer.write_scalars(1, {"train/agent_forest/loss": 1.0})
  assert not os.path.exists(tmp_path / "other")


def test_durations_round_up_never_to_zero():
  assert [metrics_io.format_duration(s) for s in (0.2, 42, 59.5, 60, 61, 754.1, 3599.5, 3661)] \
      == ["1s", "42s", "1m 00s", "1m 00s", "1m 01s", "12m 35s", "1h 00m", "1h 02m"]


def test_progress_rate_starts_at_the_first_logged_step(caplog):
  now = [1000.0]
  progress = metrics_io.Progress(total_steps=600, clock=lambda: now[0])
  with caplog.at_level(logging.INFO, logger="absl"):
    assert progress(100) is None  # compile time before this call is not a rate
    now[0] += 50.0
    assert progress(200) == pytest.approx(2.0)
    now[0] += 50.0
    assert progress(300) == pytest.approx(2.0)
  lines = [r.getMessage() for r in caplog.records]
  assert "Step 100/600 (17%): measuring steps/s from here." in lines
  assert "Step 300/600 (50%): 2 steps/s, ETA 2m 30s." in lines


def test_a_tfrecord_dataset_without_tensorflow_names_the_extra(monkeypatch):
  import importlib.util  # pylint: disable=g-import-not-at-top
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "tensorflow" else real(name, *a))
  builder = types.SimpleNamespace(
      name="cifar10", info=types.SimpleNamespace(
          file_format=tfds.core.file_adapters.FileFormat.TFRECORD))
  with pytest.raises(ImportError, match=r"'cifar10' is stored as tfrecord.*"
                     r"pip install -e \.\[tfrecord\]"):
    images._read_split(builder, "train", "image", "label")  # pylint: disable=protected-access


_NO_TF_CHILD = """
import importlib.abc, sys
sys.path.insert(0, {root!r})
attempts = []

class Watch(importlib.abc.MetaPathFinder):  # records imports tried, even caught ImportErrors
  def find_spec(self, name, path=None, target=None):
    callers = [sys._getframe(i).f_code.co_filename for i in range(1, 4)]
    presence_check = any("importlib.util" in c or "importlib/util" in c for c in callers)
    if name.split(".")[0] == "tensorflow" and not presence_check:  # etils asks if it exists
      attempts.append(name)

sys.meta_path.insert(0, Watch())
import numpy as np
from tests.conftest import tiny_config
import experiments.train  # the CLI imports (import_images only adds images.store, run below)
from sjepa_jax import images, train
from sjepa_jax import world_dataset as dataset
c = tiny_config()
c.num_train_steps = c.log_every = c.checkpoint_every = 2
train.train_and_evaluate(c, {workdir!r} + "/run", ["mountain", "forest"])
pixels = np.arange(8 * 4 * 4, dtype=np.uint8).reshape(8, 4, 4)
images.store("digits", {workdir!r} + "/tfds", {{"train": (pixels, np.arange(8) % 2)}})
assert (images.load("digits", {workdir!r} + "/tfds", "train").pixels[..., 0] == pixels).all()
config = dataset.WorldConfig(("mountain",), 2, 8, 2, 1, 1)
dataset.build({workdir!r} + "/world", ["mountain"], episode_length=2, image_size=8,
              num_train=2, num_validation=1, num_test=1)
from sjepa_jax import recordings
part = recordings.load(config.name, {workdir!r} + "/world", "train", ["mountain"],
                       recordings.Options(8, 2))
assert part.summary()["episodes"] == 2
loaded = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
assert not attempts and not loaded, (attempts, loaded)
print("no tensorflow")
"""


@pytest.mark.slow
def test_the_core_never_imports_tensorflow(tmp_path):
  """Training on the world, an array_record dataset written and read, the world recording
  built and read: no module named tensorflow is even looked for, installed or not."""
  out = subprocess.run([sys.executable, "-c", _NO_TF_CHILD.format(root=ROOT,
                                                                  workdir=str(tmp_path))],
                       cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "no tensorflow" in out.stdout
