import contextlib
import json
import os
import pathlib
import signal
import struct
import subprocess
import sys
import types

import cv2
import numpy as np
import pytest

from tf_volpose import skeleton

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def three_joint_set():
    """A root with a left and a right child: small enough to check drawings pixel by pixel."""
    return skeleton.JointSet("tiny", ("root", "left", "right"), (-1, 0, 0), ((1, 2),),
                             {"arms": ((0, 1), (0, 2))})


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def shared_data():
    """``../shared/data``; tests that need it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def random_pose(rng, root_depth=4500.0):
    """A plausible (17, 3) camera-frame pose, mm: a standing person with noise."""
    template = np.array([
        [0, 0, 0], [-130, 0, 0], [-130, 450, 0], [-130, 880, 0], [130, 0, 0], [130, 450, 0],
        [130, 880, 0], [0, -230, 0], [0, -480, 0], [0, -580, -30], [0, -690, 0], [170, -450, 0],
        [170, -170, 0], [170, 80, 0], [-170, -450, 0], [-170, -170, 0], [-170, 80, 0]], float)
    pose = template + rng.normal(0, 60, template.shape)
    pose -= pose[0]
    return pose + np.array([rng.uniform(-500, 500), rng.uniform(-200, 200), root_depth])


def write_fake_motion(path, rng, frames=3, subjects=("S1", "S9")):
    """An ``.npz`` in the layout of ``../shared/data/h36m_mocap_17j_10fps.npz``: per subject
    one ``"S<n>/walking_1"`` sequence of ``(frames, 17, 3)`` world-mm poses, each placed
    5 m in front of the subject's camera 54138969 (so in front of all four). Returns
    ``{key: poses}``."""
    from tf_volpose import camera
    motion = {}
    for subject in subjects:
        cam = camera.Camera.from_h36m(subject, "54138969")
        motion[f"{subject}/walking_1"] = np.stack([
            cam.camera_to_world(random_pose(rng, root_depth=5000.0)) for _ in range(frames)])
    np.savez(path, **motion, joint_names=np.array(skeleton.get_joint_set("h36m17").joint_names))
    return motion


def box_around(pose, K):
    """``(center (2,) px, scale)`` of a square crop 1.3x the projected pose (scale 1 = 200 px)."""
    from tf_volpose import camera
    uv = camera.project_pinhole(pose, K)
    center = (uv.min(0) + uv.max(0)) / 2
    return center, 1.3 * (uv.max(0) - uv.min(0)).max() / 200.0


def jpeg_with_exif_orientation(image, orientation):
    """JPEG bytes of ``image`` with an EXIF APP1 segment holding only the orientation tag."""
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    payload = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def copy_to_file_system(url_dir, paths):
    """Copies local files into ``url_dir`` (e.g. ``ram://...``, TensorFlow's in-process
    file system standing in for a bucket); returns the copies' URLs."""
    import tensorflow as tf
    tf.io.gfile.makedirs(url_dir)
    copies = [f"{url_dir}/{os.path.basename(p)}" for p in paths]
    for path, copy in zip(paths, copies):
        tf.io.gfile.copy(str(path), copy, overwrite=True)
    return copies


def damage_data_of_record(source, target, index):
    """Copies a record file, flipping a byte in the data of record ``index``: the framing
    stays intact, the record fails its data checksum."""
    data = bytearray(source.read_bytes())
    offset = 0
    for _ in range(index):
        offset += 16 + int.from_bytes(data[offset:offset + 8], "little")
    data[offset + 12 + 5] ^= 0xFF
    target.write_bytes(bytes(data))


def set_file_size_limit(nbytes):
    """Writes past ``nbytes`` in one file fail with EFBIG ("File too large"), as writes on
    a full disk fail with ENOSPC, without a disk to fill (SIGXFSZ ignored, so the write
    fails instead of killing the process). Returns what :func:`file_size_limit` restores."""
    import resource
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, limits[1]))
    return handler, limits


@contextlib.contextmanager
def file_size_limit(nbytes):
    """:func:`set_file_size_limit` for this process, while the block runs."""
    import resource
    handler, limits = set_file_size_limit(nbytes)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


def write_undecodable_records(directory, prefix, count=3):
    """``count`` records that pass the pipeline's record checks (a JPEG's magic bytes)
    but whose image does not decode, as shard ``<prefix>-00000.tfrecord``."""
    from tf_volpose.data import records
    example = records.make_example(image_encoded=b"\xff\xd8 not a JPEG", height=64, width=64,
                                   joints_2d=np.full((17, 2), 32.0), center=[32, 32],
                                   scale=0.3, f=[100, 100], c=[32, 32])
    with records.ShardedWriter(str(directory), prefix) as writer:
        for _ in range(count):
            writer.write(example)


def run_scripts(runs):
    """``subprocess.run``-like results (``returncode``, ``stdout``, ``stderr``) of
    ``python script ARGS`` run from the repository for each ``(script, args)``, each run
    forked from one process that loaded TensorFlow once (tests/preloaded_runner.py)."""
    out = subprocess.run([sys.executable, str(REPO / "tests" / "preloaded_runner.py")],
                         input=json.dumps([[str(REPO / script), list(map(str, args))]
                                           for script, args in runs]),
                         capture_output=True, text=True, timeout=600, cwd=REPO,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-3000:]
    return [types.SimpleNamespace(**result) for result in json.loads(out.stdout)]


def assert_scripts_fail_in_one_line(cases):
    """Runs each ``(script, args, message)``: each must exit 1 with no traceback and no
    usage dump, its last line ``error: ...`` containing ``message``."""
    results = run_scripts([(script, args) for script, args, _ in cases])
    for (script, args, message), out in zip(cases, results):
        assert_one_line_error(out, message, (script, args))


def assert_one_line_error(out, message, what=()):
    """``out`` (a :func:`run_scripts` result) exited 1 with no traceback and no usage dump,
    its last line ``error: ...`` containing ``message``."""
    lines = out.stderr.strip().splitlines()
    what = (*what, out.stderr[-2000:])
    assert out.returncode == 1 and "Traceback" not in out.stderr, what
    assert lines and lines[-1].startswith("error: ") and message in lines[-1], what
    assert not any(line.startswith("flags:") for line in lines), what


def assert_one_line_errors(script, cases):
    """:func:`assert_scripts_fail_in_one_line` for one script's ``(args, message)``s."""
    assert_scripts_fail_in_one_line([(script, args, message) for args, message in cases])


# The training tests' model: one pooling per hourglass. They exercise the training
# machinery, whose cost in a tiny model is tracing, about proportional to the layers
# (half that of hourglass_depth=4).
TINY = dict(features=8, input_size=64, hourglass_depth=1, depths=(1, 4), batch_size=2,
            checkpoint_every=2, summary_every=1, image_summary_every=2, val_every=2, val_examples=4)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """16 training and 4 validation synthetic records, in shards of 8 (one set per test file)."""
    from tf_volpose.data import synthetic
    out = tmp_path_factory.mktemp("train_data")
    synthetic.generate(str(out), num_train=16, num_val=4, seed=1, examples_per_shard=8, workers=1)
    return out


def tiny_config(records, model_dir, **kw):
    """The :data:`TINY` model's 4-step deterministic run on ``records``' train and val sets."""
    from tf_volpose import training
    values = dict(TINY, model_dir=str(model_dir), train_pattern=str(records / "train-*"),
                  val_pattern=str(records / "val-*"), deterministic=True, train_steps=4)
    values.update(kw)
    return training.TrainConfig(**values)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained one step, for the export and serving tests:
    ``(config, model, bone lengths, root directory)``."""
    from tf_volpose import bone_lengths, training
    from tf_volpose.data import synthetic
    root = tmp_path_factory.mktemp("export")
    data = root / "data"
    synthetic.generate(str(data), num_train=8, num_val=2, seed=5, workers=1)
    config = training.TrainConfig(model_dir=str(root / "run"), train_pattern=str(data / "train-*"),
                                  val_pattern="", features=8, input_size=64, hourglass_depth=1,
                                  depths=(1, 4), batch_size=2, train_steps=1, checkpoint_every=1,
                                  summary_every=1, image_summary_every=0, val_every=0)
    result = training.train(config)
    lengths, _ = bone_lengths.compute(config.train_pattern)
    return config, result["model"], lengths, root


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The path of an fp32 export (version 1) of the :func:`trained` model, for the tests
    that only read one (those that write versions make their own)."""
    from tf_volpose import export
    config, model, lengths, _ = trained
    return export.export_saved_model(model, config, str(tmp_path_factory.mktemp("exported")
                                                        / "volpose"), lengths)


def small_jpeg(h=120, w=90, seed=0):
    """JPEG bytes of a smooth random picture."""
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 255, (8, 6, 3)).astype(np.uint8), (w, h))
    return cv2.imencode(".jpg", image)[1].tobytes()



def free_port():
    """A TCP port nothing listens on now, on 127.0.0.1."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
