"""Training as ``tools/train.py`` processes: signals, full disks and distribution
strategies, which only a process of its own can show (its exit, its files, its replicas).
Apart from tests/test_training.py so that pytest-xdist runs the two files side by side."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tf_volpose import bone_lengths, training
from tests.conftest import REPO, TINY, set_file_size_limit, tiny_config


def _run_tool(args, env=None, **kw):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.Popen([sys.executable, str(REPO / "tools" / "train.py")] + args, cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kw)


def _tool_args(tiny_data, model_dir, **kw):
    values = dict(TINY, model_dir=model_dir, train_pattern=f"{tiny_data}/train-*", train_steps=4,
                  val_pattern="", deterministic=True)
    values.update(kw)
    return [f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
            for k, v in values.items()]


def test_sigterm_checkpoints_and_exits_cleanly(tiny_data, tmp_path):
    proc = _run_tool(_tool_args(tiny_data, tmp_path, train_steps=100000, checkpoint_every=100000))
    deadline = time.time() + 120
    seen = ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen += line
        if "step" in line and "loss" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    seen += out
    assert proc.returncode == 0, seen[-2000:]
    assert "interrupted by SIGTERM" in seen
    # no bone_lengths.json beside these records: the run computes its own, and says so
    assert f"computing the bone lengths of {tiny_data}/train-* into {tmp_path}" in seen
    # the tool's own lines only: TensorFlow's INFO records (e.g. checkpoint sharding times,
    # printed twice) stay off unless --verbosity asks for them
    assert "Sharding callback" not in seen and "INFO:tensorflow" not in seen, seen[-2000:]
    latest = tf.train.latest_checkpoint(str(tmp_path))
    assert latest is not None
    step = int(latest.rsplit("-", 1)[1])
    assert 0 < step < 100000


MIRRORED_SCRIPT = """
import sys, tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from tf_volpose import skeleton, training
config = training.TrainConfig(model_dir=sys.argv[2], train_pattern=sys.argv[1] + "/train-*",
    strategy="mirrored", features=8, input_size=64, hourglass_depth=1, depths=(1, 4), batch_size=4,
    train_steps=3, checkpoint_every=3, summary_every=1, image_summary_every=0, val_every=0,
    deterministic=True)
result = training.train(config)
import tensorflow as tf
print("REPLICAS", tf.distribute.MirroredStrategy().num_replicas_in_sync, "STEP", result["step"],
      "LOSS", result["loss"])
"""


def test_mirrored_strategy_on_two_logical_cpus(tiny_data, tmp_path):
    out = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(tiny_data), str(tmp_path)],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-3000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("REPLICAS")][-1]
    assert line.split()[1] == "2" and line.split()[3] == "3"
    assert np.isfinite(float(line.split()[5]))
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-3")


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_mirrored_two_processes_end_identical(tiny_data, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(_run_tool(_tool_args(tiny_data, tmp_path, strategy="multi_worker",
                                          train_steps=3, checkpoint_every=3, image_summary_every=0),
                               env={"TF_CONFIG": tf_config}))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    digests = [[l.split()[-1] for l in out.splitlines() if l.startswith("weights digest")][-1]
               for out in outputs]
    assert digests[0] == digests[1]
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-3")  # written by the chief
    assert not glob.glob(str(tmp_path / "workertemp_*"))


def test_sigkill_leaves_only_restorable_checkpoints(tiny_data, tmp_path):
    proc = _run_tool(_tool_args(tiny_data, tmp_path, train_steps=100000, checkpoint_every=1,
                                keep_checkpoints=2, image_summary_every=0))
    saved = 0
    deadline = time.time() + 120
    while time.time() < deadline and saved < 4:
        if "saved checkpoint" in proc.stdout.readline():
            saved += 1
    time.sleep(0.3)  # likely mid-way through the next save
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    latest = tf.train.latest_checkpoint(str(tmp_path))
    step = int(latest.rsplit("-", 1)[1])
    assert step >= 4
    # the killed run describes itself (config.json is written before the first step), and
    # holds the bone lengths of its records (so that it exports without them)
    assert training.load_config(str(tmp_path)).train_steps == 100000
    np.testing.assert_allclose(bone_lengths.load(str(tmp_path / bone_lengths.FILE)),
                               bone_lengths.compute(str(tiny_data / "train-*"))[0], rtol=1e-6)
    resumed = training.train(tiny_config(tiny_data, tmp_path, train_steps=step + 1, val_pattern=""))
    assert resumed["step"] == step + 1


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_no_temporary(tiny_data,
                                                                               tmp_path):
    """A full disk, by a file size limit that fails the checkpoint's data file with EFBIG
    (what ENOSPC does on a full disk, checked by hand on a 3 MB tmpfs): before, a
    traceback from SaveV2 and a ckpt-2_temp directory left behind; the run's config.json
    was written only at the end, so the killed run could not be evaluated by name."""
    run = tmp_path / "run"
    proc = _run_tool(_tool_args(tiny_data, run, train_steps=3, image_summary_every=0),
                     preexec_fn=lambda: set_file_size_limit(50_000))  # checkpoint data: ~90 KB
    out, _ = proc.communicate(timeout=300)
    lines = out.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert lines[-1].startswith(f"error: cannot write checkpoint 2 into {run} (") \
        and lines[-1].endswith("no earlier checkpoint was written: free space (or fix access) "
                               "and run again"), lines[-1]
    assert "File too large" in lines[-1] and "function_node" not in lines[-1]
    assert not glob.glob(str(run / "*_temp")) and tf.train.latest_checkpoint(str(run)) is None
    # written before the first step, so the run's checkpoints (had any been written) load by name
    assert training.load_config(str(run)) == tiny_config(tiny_data, run, train_steps=3,
                                                         image_summary_every=0, val_pattern="")


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
def test_events_that_cannot_be_written_are_one_line(tiny_data, tmp_path):
    """The TensorBoard events file filling the disk (before: a FlushSummaryWriter traceback)."""
    run = tmp_path / "run"
    proc = _run_tool(_tool_args(tiny_data, run, train_steps=500, checkpoint_every=1000,
                                image_summary_every=1, val_pattern=f"{tiny_data}/val-*",
                                val_every=1000),
                     preexec_fn=lambda: set_file_size_limit(60_000))
    out, _ = proc.communicate(timeout=300)
    lines = out.strip().splitlines()
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert lines[-1].startswith(f"error: cannot write TensorBoard events into {run / 'train'} (")
    assert "File too large" in lines[-1] and "[Op:" not in lines[-1], lines[-1]
