import ast
import glob
import http.client
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from tf_volpose import bone_lengths, export, training, volume
from tf_volpose.data import synthetic
from tf_volpose.models import hourglass
from tests.conftest import assert_one_line_errors, file_size_limit, jpeg_with_exif_orientation

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "serving"))  # serving/ holds scripts, not a package
import client as serving_client  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = root / "data"
    synthetic.generate(str(data), num_train=8, num_val=2, seed=5, workers=1)
    config = training.TrainConfig(model_dir=str(root / "run"), train_pattern=str(data / "train-*"),
                                  val_pattern="", features=8, input_size=64, depths=(1, 4),
                                  batch_size=2, train_steps=1, checkpoint_every=1, summary_every=1,
                                  image_summary_every=0, val_every=0)
    result = training.train(config)
    lengths, _ = bone_lengths.compute(config.train_pattern)
    return config, result["model"], lengths, root


def _jpeg(h=120, w=90, seed=0):
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 255, (8, 6, 3)).astype(np.uint8), (w, h))
    return cv2.imencode(".jpg", image)[1].tobytes()


def test_export_reload_matches_the_in_memory_model(trained, tmp_path):
    config, model, lengths, _ = trained
    path = export.export_saved_model(model, config, str(tmp_path / "volpose"), lengths,
                                     provenance={"checkpoint": "runs/x/ckpt-1"})
    assert path.endswith(os.path.join("volpose", "1"))
    assert os.path.exists(os.path.join(path, "assets.extra", export.WARMUP_FILE))
    info = json.load(open(os.path.join(path, "assets.extra", export.INFO_FILE)))
    assert info["version"] == 1 and info["precision"] == "fp32" and info["checkpoint"] == "runs/x/ckpt-1"
    assert info["decode"] == "local_softargmax" and info["config"]["features"] == 8
    np.testing.assert_allclose(info["bone_lengths_mm"], lengths, rtol=1e-6)
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "with_intrinsics", "heatmaps"}
    images = tf.constant([_jpeg(), _jpeg(seed=1)])
    boxes = tf.constant([[10.0, 20.0, 60.0, 80.0], [0.0, 0.0, 90.0, 120.0]])
    got = loaded.signatures["serving_default"](image_bytes=images, box=boxes)
    module = export.ServingModule(model, config, lengths)
    want = module.serving_default(images, boxes)
    for key in ("joints_3d_mm", "joints_2d_px", "joints_voxel", "confidence"):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-4, atol=1e-3)
    assert got["joints_3d_mm"].shape == (2, 17, 3) and got["confidence"].shape == (2, 17)
    # same decode path as evaluation: heatmaps of the crop -> decode_heatmaps_tf
    heat = loaded.signatures["heatmaps"](image_bytes=images, box=boxes)["heatmaps"]
    voxels, conf = volume.decode_heatmaps_tf(heat, 17, config.fine_depth, "local_softargmax")
    np.testing.assert_allclose(voxels.numpy(), got["joints_voxel"].numpy(), atol=1e-4)
    # with_intrinsics at the documented default intrinsics gives the default answer
    focal = 120.0 / (2.0 * np.tan(np.radians(export.DEFAULT_FOV_DEG) / 2.0))
    calib = loaded.signatures["with_intrinsics"](image_bytes=images, box=boxes,
                                                 focal=tf.constant([[focal, focal]] * 2, tf.float32),
                                                 principal_point=tf.constant([[45.0, 60.0]] * 2))
    np.testing.assert_allclose(calib["joints_3d_mm"].numpy(), got["joints_3d_mm"].numpy(),
                               rtol=1e-4, atol=1e-2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="focal"):
        loaded.signatures["with_intrinsics"](image_bytes=images, box=boxes,
                                             focal=tf.constant([[-1.0, 1.0]] * 2),
                                             principal_point=tf.constant([[45.0, 60.0]] * 2))
    # versions count up
    assert export.export_saved_model(model, config, str(tmp_path / "volpose"), lengths).endswith("2")
    with pytest.raises(ValueError, match="already exists"):
        export.export_saved_model(model, config, str(tmp_path / "volpose"), lengths, version=2)


@pytest.mark.parametrize("inputs,message", [
    (dict(images=2, boxes=1), "image_bytes and box must have the same batch size"),
    (dict(images=0, boxes=0), "empty batch"),
    (dict(images=1, boxes=1, focal=2), "image_bytes and focal must have the same batch size"),
    (dict(images=2, boxes=2, principal=1),
     "image_bytes and principal_point must have the same batch size"),
])
def test_signatures_name_a_batch_mismatch_before_decoding(trained, inputs, message):
    config, model, lengths, _ = trained
    module = export.ServingModule(model, config, lengths)
    images = tf.constant([_jpeg()] * inputs["images"], tf.string)
    boxes = tf.constant([[0.0, 0.0, 90.0, 120.0]] * inputs["boxes"], shape=[inputs["boxes"], 4])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        if "focal" in inputs or "principal" in inputs:
            module.with_intrinsics(
                images, boxes, tf.fill([inputs.get("focal", inputs["images"]), 2], 100.0),
                tf.fill([inputs.get("principal", inputs["images"]), 2], 50.0))
        else:
            module.serving_default(images, boxes)


def test_loaded_export_holds_each_input_to_its_signature_shape(trained, tmp_path):
    """As TF Serving runs it: a loaded signature (like TF Serving) does not check shapes itself."""
    config, model, lengths, _ = trained
    loaded = tf.saved_model.load(export.export_saved_model(model, config, str(tmp_path / "v"),
                                                           lengths))
    images, box = tf.constant([_jpeg()]), tf.constant([[0.0, 0.0, 90.0, 120.0]])
    focal, principal = tf.constant([[150.0, 150.0]]), tf.constant([[45.0, 60.0]])
    for name, inputs in (
            # before the shape checks: answered as if valid (the first and the focal one),
            # or failed inside the graph with messages that name no input
            ("box", dict(box=tf.constant([[0.0, 0.0, 90.0]]))),
            ("box", dict(box=tf.constant([[0.0, 0.0, 90.0, 120.0, 1.0]]))),
            ("box", dict(box=tf.constant([0.0, 0.0, 90.0, 120.0]))),
            ("box", dict(box=tf.constant([[[0.0, 0.0, 90.0, 120.0]]]))),
            ("image_bytes", dict(image_bytes=tf.constant(_jpeg()))),
            ("image_bytes", dict(image_bytes=tf.constant([[_jpeg()]]))),
            ("focal", dict(focal=tf.constant([[150.0]]))),
            ("focal", dict(focal=tf.constant([[150.0, 150.0, 1.0]]))),
            ("principal_point", dict(principal_point=tf.constant([[45.0]])))):
        calibrated = name in ("focal", "principal_point")
        args = dict(image_bytes=images, box=box, **(dict(focal=focal, principal_point=principal)
                                                    if calibrated else {}))
        args.update(inputs)
        signature = loaded.signatures["with_intrinsics" if calibrated else "serving_default"]
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=rf"Shape of tensor \S*{name}\S* \[[\d,]*\] is not compatible"):
            signature(**args)
    good = loaded.signatures["with_intrinsics"](image_bytes=images, box=box, focal=focal,
                                                principal_point=principal)
    assert good["joints_3d_mm"].shape == (1, 17, 3)


def test_export_runs_in_a_tf1_session_as_tf_serving_loads_it(trained, tmp_path):
    """TF Serving's C++ loader (like ``saved_model_cli run``) restores the export into a TF1
    session with the saver's restore op; before ``export._saveable`` every request failed
    there with ``Could not find variable ...`` while ``tf.saved_model.load`` worked."""
    config, model, lengths, _ = trained
    images = np.array([_jpeg(), _jpeg(seed=1)], object)
    boxes = np.array([[10.0, 20.0, 60.0, 80.0], [0.0, 0.0, 90.0, 120.0]], np.float32)
    keys = ("joints_3d_mm", "joints_2d_px", "joints_voxel", "confidence")
    for precision in export.PRECISIONS:
        path = export.export_saved_model(model, config, str(tmp_path / precision), lengths,
                                         precision=precision)
        stored = [key for key in tf.train.load_checkpoint(os.path.join(path, "variables",
                                                                       "variables"))
                  .get_variable_to_shape_map() if key.endswith("VARIABLE_VALUE")]
        assert len(stored) == len(model.variables)  # each weight once
        want = tf.saved_model.load(path).signatures["serving_default"](
            image_bytes=tf.constant(images), box=tf.constant(boxes))
        warmup = list(tf.data.TFRecordDataset(
            os.path.join(path, "assets.extra", export.WARMUP_FILE)).as_numpy_iterator())
        assert len(warmup) == 2
        with tf.compat.v1.Session(graph=tf.Graph()) as session:
            meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
            signature = meta.signature_def["serving_default"]
            got = session.run({key: signature.outputs[key].name for key in keys},
                              {signature.inputs["image_bytes"].name: images,
                               signature.inputs["box"].name: boxes})
            # the warm-up requests, replayed as TF Serving does when it loads a version
            for record in warmup:
                request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
                warm = meta.signature_def[request.model_spec.signature_name]
                answer = session.run(warm.outputs["joints_3d_mm"].name,
                                     {warm.inputs[name].name: tf.make_ndarray(tensor)
                                      for name, tensor in request.inputs.items()})
                assert answer.shape == (1, 17, 3) and np.isfinite(answer).all()
        for key in keys:
            np.testing.assert_allclose(got[key], want[key].numpy(), rtol=1e-5, atol=1e-4)


def test_saved_model_cli_lists_the_signatures(trained, tmp_path):
    config, model, lengths, _ = trained
    path = export.export_saved_model(model, config, str(tmp_path / "v"), lengths)
    cli = pathlib.Path(sys.executable).with_name("saved_model_cli")
    if not cli.exists():
        pytest.skip("saved_model_cli is not installed beside this Python")
    out = subprocess.run([str(cli), "show", "--dir", path, "--all"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("serving_default", "with_intrinsics", "heatmaps", "image_bytes", "joints_3d_mm"):
        assert name in out.stdout


def test_bf16_export_is_close_to_fp32(trained, tmp_path):
    config, model, lengths, _ = trained
    images = tf.constant([_jpeg()])
    boxes = tf.constant([[0.0, 0.0, 90.0, 120.0]])
    fp32 = export.ServingModule(model, config, lengths).heatmaps(images, boxes)["heatmaps"]
    low = export.build_for_precision(model, config, "bf16")
    assert low.get_layer("s0_fuse_features").compute_dtype == "bfloat16"
    assert {h.name: h.compute_dtype for h in hourglass.head_layers(low)} == {
        f"s{i}_head": "float32" for i in range(len(config.depths))}
    bf16 = export.ServingModule(low, config, lengths).heatmaps(images, boxes)["heatmaps"]
    assert bf16.dtype == tf.float32
    # float32 heads: the heatmaps are not bf16 values cast up (8-bit mantissas only)
    rounded = tf.cast(tf.cast(bf16, tf.bfloat16), tf.float32)
    assert float(tf.reduce_mean(tf.cast(rounded != bf16, tf.float32))) > 0.5
    scale = float(tf.reduce_max(tf.abs(fp32)))
    assert float(tf.reduce_max(tf.abs(bf16 - fp32))) < 0.1 * scale + 1e-3


def test_bf16_export_of_a_decoupled_model_has_float32_heatmaps():
    config = training.TrainConfig(model="decoupled", features=8, input_size=64, depths=(4,),
                                  hourglass_depth=2, decoupled_2d_stacks=1)
    low = export.build_for_precision(training.build_model(config), config, "bf16")
    assert sorted(h.compute_dtype for h in hourglass.head_layers(low)) == ["float32"] * 2
    heat = export.ServingModule(low, config, np.full(16, 250.0)).heatmaps(
        tf.constant([_jpeg()]), tf.constant([[0.0, 0.0, 90.0, 120.0]]))["heatmaps"]
    # the last head's float32 values reach the output (not cast to bfloat16 and back)
    rounded = tf.cast(tf.cast(heat, tf.bfloat16), tf.float32)
    assert float(tf.reduce_mean(tf.cast(rounded != heat, tf.float32))) > 0.5


def test_killed_export_leaves_no_version_directory(trained, tmp_path):
    config, model, lengths, root = trained
    base = tmp_path / "volpose"
    script = (f"import json, numpy as np\n"
              f"from tf_volpose import training, evaluation, export\n"
              f"config = training.load_config({str(root / 'run')!r})\n"
              f"model, _ = evaluation.load_trained_model(config, {str(root / 'run')!r})\n"
              f"export.export_saved_model(model, config, {str(base)!r}, np.full(16, 300.0))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    deadline = time.time() + 120
    while time.time() < deadline and not glob.glob(str(base / ".tmp-*" / "*")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not [p for p in os.listdir(base) if p.isdigit()]
    # the next export cleans the leftovers and writes version 1
    assert export.export_saved_model(model, config, str(base), lengths).endswith("1")
    assert not glob.glob(str(base / ".tmp-*"))


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
def test_an_export_that_cannot_be_written_is_one_error_and_leaves_nothing(trained, tmp_path):
    """A full disk (a file size limit here; ENOSPC on a 3 MB tmpfs by hand) was a
    traceback from the SavedModel writer."""
    config, model, lengths, _ = trained
    base = tmp_path / "volpose"
    with pytest.raises(OSError, match=f"cannot write the export into {base} \\(.*File too "
                                      f"large\\); nothing was written"):
        with file_size_limit(20_000):
            export.export_saved_model(model, config, str(base), lengths)
    assert os.listdir(base) == []


def test_an_export_base_that_is_a_file_is_refused_before_anything_is_saved(trained, tmp_path):
    """Before: "[Errno 17] File exists" naming the path but not the problem."""
    config, model, lengths, _ = trained
    (tmp_path / "volpose").write_text("")
    with pytest.raises(ValueError, match=f"export_base '{tmp_path}/volpose' is a file, not a "
                                         f"directory"):
        export.export_saved_model(model, config, str(tmp_path / "volpose"), lengths)
    assert sorted(os.listdir(tmp_path)) == ["volpose"]


def test_concurrent_exports_keep_each_others_work(trained, tmp_path, monkeypatch):
    """An export removes the temporary directories only of exports that are gone, and a
    version another export takes while it is written moves it on (or, chosen, stops it)."""
    config, model, lengths, _ = trained
    base = tmp_path / "volpose"
    base.mkdir()
    host = socket.gethostname()
    gone_pid = subprocess.Popen(["true"])
    gone_pid.wait()
    temporary = {  # name -> whether it must survive
        f".tmp-1-{host}-{os.getpid()}-0123abcd": True,  # in progress: this process runs
        f".tmp-1-other-host-{os.getpid()}-0123abcd": True,  # cannot be checked from here
        f".tmp-1-{host}-{gone_pid.pid}-0123abcd": False,  # its process is gone
        ".tmp-2-89abcdef": False,  # the name of older versions, without host and process
    }
    for name in temporary:
        (base / name).mkdir()
        (base / name / "saved_model.pb").write_bytes(b"partial")
    write_warmup_requests = export.write_warmup_requests

    def racing(taken):
        def write(path, *args, **kwargs):  # the last step before the rename
            write_warmup_requests(path, *args, **kwargs)
            shutil.copytree(os.path.dirname(os.path.dirname(path)), base / taken)
        return write

    monkeypatch.setattr(export, "write_warmup_requests", racing("1"))
    assert export.export_saved_model(model, config, str(base), lengths) == str(base / "2")
    assert json.load(open(base / "2" / "assets.extra" / export.INFO_FILE))["version"] == 2
    assert sorted(p.name for p in base.iterdir()) == sorted(
        ["1", "2"] + [name for name, keep in temporary.items() if keep])
    monkeypatch.setattr(export, "write_warmup_requests", racing("3"))
    with pytest.raises(ValueError, match=r"export version .*3 appeared while this export was "
                                         r"written \(another export into .*\?\); nothing"):
        export.export_saved_model(model, config, str(base), lengths, version=3)
    assert sorted(p.name for p in base.iterdir()) == sorted(
        ["1", "2", "3"] + [name for name, keep in temporary.items() if keep])


def _batching_parameters_class():
    """TF Serving's BatchingParameters (session_bundle_config.proto), which the pip package
    tensorflow-serving-api does not ship: declared here with the fields that config uses."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    proto = descriptor_pb2.FileDescriptorProto(name="batching.proto", package="tensorflow.serving",
                                               dependency=["google/protobuf/wrappers.proto"])
    message = proto.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    for number, (name, kind) in enumerate([
            ("max_batch_size", "Int64Value"), ("batch_timeout_micros", "Int64Value"),
            ("max_enqueued_batches", "Int64Value"), ("num_batch_threads", "Int64Value"),
            ("thread_pool_name", "StringValue")], start=1):
        message.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                          type_name=f".google.protobuf.{kind}")
    message.field.add(name="allowed_batch_sizes", number=6, type=F.TYPE_INT64,
                      label=F.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL,
                      label=F.LABEL_OPTIONAL)
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def test_serving_config_files_parse():
    from tensorflow_serving.config import model_server_config_pb2
    models = text_format.Parse((REPO / "serving" / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    assert models.model_config_list.config[0].name == "volpose"
    assert models.model_config_list.config[0].model_version_policy.latest.num_versions == 1
    batching = text_format.Parse((REPO / "serving" / "batching.config").read_text(),
                                 _batching_parameters_class()())
    assert batching.max_batch_size.value == 8 and batching.num_batch_threads.value == 2
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_size: 8", _batching_parameters_class()())  # a wrapper, not int


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    config, model, lengths, _ = trained
    base = tmp_path_factory.mktemp("serve") / "volpose"
    export.export_saved_model(model, config, str(base), lengths)
    port, rest_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "serving" / "server.py"), f"--model_base_path={base}",
         "--model_name=volpose", f"--port={port}", f"--rest_port={rest_port}",
         "--max_pixels=100000", "--max_batch_size=3"],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = serving_client.GrpcClient(f"127.0.0.1:{port}", timeout=60, retries=8)
    try:
        try:
            client.wait_until_available(120, process=proc)
        except serving_client.ServingError:
            raise RuntimeError(proc.stdout.read() if proc.poll() is not None else "timeout")
        yield client, f"127.0.0.1:{port}", f"127.0.0.1:{rest_port}", proc
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)


SERVE_FROM_A_BUCKET = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import tensorflow as tf
import client, server

def upload(local, url):  # as gsutil cp -r would
    for root, _, names in os.walk(local):
        for name in names:
            target = url + "/" + os.path.relpath(os.path.join(root, name), local)
            tf.io.gfile.makedirs(os.path.dirname(target))
            tf.io.gfile.copy(os.path.join(root, name), target)

base, image = "ram://bucket/volpose", open(sys.argv[3], "rb").read()
upload(sys.argv[2], base + "/1")
grpc_server, _, model = server.serve(base, "volpose", int(sys.argv[4]))
caller = client.GrpcClient("127.0.0.1:" + sys.argv[4], timeout=60)
joints = caller.predict(image, [0.0, 0.0, 90.0, 120.0])["joints_3d_mm"]
upload(sys.argv[2], base + "/2")
changed = model.reload_newest()
errors = []
for path, kind in ((base + "/1", ValueError), ("ram://bucket/none", ValueError),
                   ("nofs://bucket/volpose", OSError)):
    try:
        server.newest_version(path)
    except kind as e:
        errors.append(str(e))
print("RESULT " + json.dumps({"path": model.path, "joints": joints.tolist(),
                              "changed": changed, "errors": errors}))
caller.close()
grpc_server.stop(0)
"""


def test_server_serves_from_a_bucket(trained, tmp_path):
    """``--model_base_path`` on a file system tf.io.gfile reads, as TF Serving's (ram://,
    in-process, standing in for gs://): versions are found, loaded and polled there.
    Before: "no numeric version directory" (Python's glob) for any URL."""
    config, model, lengths, _ = trained
    local = export.export_saved_model(model, config, str(tmp_path / "volpose"), lengths)
    image = tmp_path / "photo.jpg"
    image.write_bytes(_jpeg())
    out = subprocess.run([sys.executable, "-c", SERVE_FROM_A_BUCKET, str(REPO / "serving"), local,
                          str(image), str(_free_port())], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert result["path"] == "ram://bucket/volpose/2"
    assert result["changed"] == "serving volpose version 2 from ram://bucket/volpose/2"
    want = tf.saved_model.load(local).signatures["serving_default"](
        image_bytes=tf.constant([image.read_bytes()]), box=tf.constant([[0.0, 0.0, 90.0, 120.0]]))
    np.testing.assert_allclose(result["joints"], want["joints_3d_mm"].numpy()[0], rtol=1e-5)
    assert result["errors"][0].endswith("it is a version itself; give its parent, "
                                        "--model_base_path=ram://bucket/volpose")
    assert result["errors"][1].endswith("'ram://bucket/none': it does not exist")
    assert result["errors"][2].startswith("--model_base_path 'nofs://bucket/volpose' cannot be "
                                          "reached")


def test_server_serves_a_newer_version_when_it_appears(trained, tmp_path):
    """As TF Serving polls its base path: a new export is served from the next request on; a
    version directory that does not load (yet) is reported once, the served one keeps serving,
    and it is tried again when its files change."""
    config, model, lengths, _ = trained
    base = tmp_path / "volpose"
    export.export_saved_model(model, config, str(base), lengths)  # version 1
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "serving" / "server.py"), f"--model_base_path={base}",
         "--model_name=volpose", f"--port={port}", "--file_system_poll_wait_seconds=0.2"],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = serving_client.GrpcClient(f"127.0.0.1:{port}", timeout=60, retries=8)

    def wait_for_version(version):
        deadline = time.time() + 60
        while client.status() != [(version, "AVAILABLE")]:
            assert time.time() < deadline, client.status()
            time.sleep(0.2)

    try:
        client.wait_until_available(120, process=proc)
        assert client.status() == [(1, "AVAILABLE")]
        (base / "2").mkdir()  # no saved_model.pb yet: does not load
        time.sleep(2.0)  # ten polls: reported once, not retried while the directory is as it was
        assert client.status() == [(1, "AVAILABLE")]
        assert client.predict(_jpeg(), [0.0, 0.0, 90.0, 120.0])["confidence"].shape == (17,)
        # its files change: the complete copy replaces the empty directory in one rename (a copy
        # made in place could be seen half-written by a poll, a second, legitimate report)
        shutil.copytree(base / "1", tmp_path / "staging")
        (base / "2").rmdir()
        (tmp_path / "staging").rename(base / "2")
        wait_for_version(2)
        assert export.export_saved_model(model, config, str(base), lengths).endswith("3")
        wait_for_version(3)
        assert client.predict(_jpeg(), [0.0, 0.0, 90.0, 120.0])["confidence"].shape == (17,)
    finally:
        client.close()
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert output.count(f"version 2 under {base} does not load") == 1, output[-3000:]
    for version in (2, 3):
        assert f"serving volpose version {version} from {base}/{version}" in output, output[-3000:]


def test_grpc_round_trip(server):
    client, address, _, _ = server
    out = client.predict(_jpeg(), [0.0, 0.0, 90.0, 120.0])
    assert out["joints_3d_mm"].shape == (17, 3) and np.isfinite(out["joints_3d_mm"]).all()
    assert client.status() == [(1, "AVAILABLE")]
    signatures = client.metadata()
    assert set(signatures) >= {"serving_default", "with_intrinsics", "heatmaps"}
    assert "image_bytes" in signatures["serving_default"].inputs
    heat = client.predict(_jpeg(), [0.0, 0.0, 90.0, 120.0], signature="heatmaps")
    assert heat["heatmaps"].shape == (16, 16, 17 * 4)


@pytest.mark.parametrize("image,box,message", [
    (b"\x00\x01random bytes" * 10, [0, 0, 10, 10], "not a JPEG or PNG"),
    (b"", [0, 0, 10, 10], "not a JPEG or PNG"),
    ("good", [0, 0, 0, 10], "box width and height must be positive"),
    ("good", [0, float("nan"), 10, 10], "box must be finite"),
    ("good", [-30, 0, 20, 10], "lies outside the image"),
    ("good", [10, 200, 20, 10], "lies outside the image"),
    ("huge", [0, 0, 10, 10], "above the limit"),
    (b"\xff\xd8\xff\xe0 truncated jpeg", [0, 0, 10, 10], "JPEG"),
])
def test_bad_requests_are_invalid_argument_and_the_server_keeps_serving(server, image, box,
                                                                         message):
    client = server[0]
    if image == "good":
        image = _jpeg()
    elif image == "huge":
        image = _jpeg(h=400, w=400)  # 160,000 px > --max_pixels=100000
    with pytest.raises(serving_client.ServingError) as info:
        client.predict(image, box)
    assert info.value.code == "INVALID_ARGUMENT", str(info.value)
    assert message in str(info.value) and "Graph execution error" not in str(info.value)
    assert client.predict(_jpeg(), [0.0, 0.0, 90.0, 120.0])["confidence"].shape == (17,)


def _predict_request(images, output_filter=()):
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="volpose"),
                                         output_filter=list(output_filter))
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([_jpeg()] * images))
    request.inputs["box"].CopyFrom(tf.make_tensor_proto([[0.0, 0.0, 90.0, 120.0]] * images,
                                                        dtype=tf.float32))
    return request


def test_output_filter_returns_what_it_names_and_refuses_other_names(server):
    client = server[0]
    response = client._call(client.predictions.Predict, _predict_request(1, ["confidence"]))
    assert set(response.outputs) == {"confidence"}
    with pytest.raises(serving_client.ServingError,
                       match="INVALID_ARGUMENT: output tensor alias not found in signature: joints"):
        client._call(client.predictions.Predict, _predict_request(1, ["confidence", "joints"]))


def test_batches_above_the_limit_and_bad_rest_lengths_are_refused_unread(server):
    client, _, rest, _ = server

    def batch(n):
        response = client._call(client.predictions.Predict, _predict_request(n))
        return tf.make_ndarray(response.outputs["joints_3d_mm"])

    assert batch(3).shape == (3, 17, 3)  # --max_batch_size=3
    with pytest.raises(serving_client.ServingError,
                       match="a batch of 4 images is above the limit of 3 per request") as info:
        batch(4)
    assert info.value.code == "INVALID_ARGUMENT"
    # a body announced above the limit is answered 413 without being read (none is sent)
    host, port = rest.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/v1/models/volpose:predict")
    connection.putheader("Content-Length", str(1 << 40))
    connection.endheaders()
    reply = connection.getresponse()
    assert reply.status == 413 and b"above the limit" in reply.read()
    connection.close()
    for length, message in (("-5", b"Content-Length -5 is negative"), ("many", b"malformed")):
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.putrequest("POST", "/v1/models/volpose:predict")
        connection.putheader("Content-Length", length)
        connection.endheaders()
        reply = connection.getresponse()
        assert reply.status == 400 and message in reply.read()
        connection.close()
    out = serving_client.RestClient(rest).predict(_jpeg(), [0.0, 0.0, 90.0, 120.0])
    assert out["joints_3d_mm"].shape == (17, 3)


def test_unknown_model_and_signature(server):
    _, address, _, _ = server
    other = serving_client.GrpcClient(address, model="nope", timeout=30)
    with pytest.raises(serving_client.ServingError, match="NOT_FOUND"):
        other.predict(_jpeg(), [0, 0, 10, 10])
    with pytest.raises(serving_client.ServingError, match="FAILED_PRECONDITION"):
        server[0].predict(_jpeg(), [0, 0, 10, 10], signature="nope")


def test_rest_round_trip(server):
    _, _, rest, _ = server
    out = serving_client.RestClient(rest).predict(_jpeg(), [0.0, 0.0, 90.0, 120.0])
    assert out["joints_3d_mm"].shape == (17, 3)
    grpc_out = server[0].predict(_jpeg(), [0.0, 0.0, 90.0, 120.0])
    np.testing.assert_allclose(out["joints_3d_mm"], grpc_out["joints_3d_mm"], rtol=1e-5)
    with pytest.raises(serving_client.ServingError, match="HTTP 400"):
        serving_client.RestClient(rest).predict(b"junk", [0, 0, 10, 10])
    # malformed bodies: 400 with what is wrong, and the server keeps serving
    url = f"http://{rest}/v1/models/volpose:predict"
    for body, message in ((b"{not json", "malformed request"),
                          (b"{}", "no 'instances' given"),
                          (b'{"instances": []}', "'instances' must be a non-empty list"),
                          (b'{"instances": [{"image_bytes": {"b64": ""}}]}', "inputs must be")):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30)
        assert info.value.code == 400 and message in info.value.read().decode(), body
    out = serving_client.RestClient(rest).predict(_jpeg(), [0.0, 0.0, 90.0, 120.0])
    assert out["confidence"].shape == (17,)


def test_rest_model_status_and_metadata_as_tf_serving_answers(server):
    """``GET /v1/models/<name>[/versions/<n>][/metadata]``, TF Serving's JSON."""
    rest = server[2]

    def get(path):
        try:
            with urllib.request.urlopen(f"http://{rest}{path}", timeout=30) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    available = {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
        "error_code": "OK", "error_message": ""}}]}
    assert get("/v1/models/volpose") == (200, available)
    assert get("/v1/models/volpose/versions/1") == (200, available)
    code, metadata = get("/v1/models/volpose/metadata")
    assert code == 200 and metadata["model_spec"]["name"] == "volpose"
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) >= {"serving_default", "with_intrinsics", "heatmaps"}
    assert set(signatures["serving_default"]["inputs"]) == {"image_bytes", "box"}
    for path, message in (("/v1/models/nope", "Latest(nope)"),
                          ("/v1/models/volpose/versions/7", "Specific(volpose, 7)"),
                          ("/v1/models/volpose/versions/x", "unknown path"),
                          ("/v2/models/volpose", "unknown path")):
        code, body = get(path)
        assert code == 404 and message in body["error"], (path, body)


def test_clients_send_intrinsics_over_grpc_and_rest_and_the_cli_prints_them(server, tmp_path):
    """``--focal`` (and ``focal=``/``principal=`` in the clients) call ``with_intrinsics``, with
    the principal point at the image centre, and move the answer against the default's."""
    client, address, rest, _ = server
    box, focal, principal = [0.0, 0.0, 90.0, 120.0], [150.0, 150.0], [45.0, 60.0]
    grpc_out = client.predict(_jpeg(), box, "with_intrinsics", focal, principal)
    rest_out = serving_client.RestClient(rest).predict(_jpeg(), box, "with_intrinsics", focal,
                                                        principal)
    np.testing.assert_allclose(rest_out["joints_3d_mm"], grpc_out["joints_3d_mm"], rtol=1e-5)
    default = client.predict(_jpeg(), box)
    # another focal length (the default's is 120 / (2 tan 25 deg) = 128.7 px) scales x, y
    assert np.abs(grpc_out["joints_3d_mm"][:, :2] - default["joints_3d_mm"][:, :2]).max() > 1.0
    image = tmp_path / "photo.jpg"
    image.write_bytes(_jpeg())
    for front_end in ([f"--server={address}"], [f"--server={rest}", "--rest"]):
        out = subprocess.run([sys.executable, str(REPO / "serving" / "client.py"), *front_end,
                              f"--image={image}", "--focal=150,150"], capture_output=True,
                             text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        assert out.returncode == 0, out.stderr[-2000:]
        pelvis = next(line for line in out.stdout.splitlines() if line.startswith("pelvis"))
        np.testing.assert_allclose([float(v) for v in pelvis.split()[1:4]],
                                   grpc_out["joints_3d_mm"][0], atol=0.051)


def test_client_retries_then_reports_unavailable():
    client = serving_client.GrpcClient(f"127.0.0.1:{_free_port()}", timeout=2, retries=2)
    start = time.time()
    with pytest.raises(serving_client.ServingError, match="UNAVAILABLE"):
        client.status()
    assert time.time() - start >= 0.2 + 0.4  # two backoffs


def test_predict_tool_writes_the_figure_and_json(trained, tmp_path):
    config, model, lengths, _ = trained
    path = export.export_saved_model(model, config, str(tmp_path / "volpose"), lengths)
    image = tmp_path / "photo.jpg"
    image.write_bytes(_jpeg(h=240, w=180))
    out = subprocess.run([sys.executable, str(REPO / "tools" / "predict.py"), f"--image={image}",
                          f"--saved_model={path}", f"--output={tmp_path / 'out.png'}",
                          f"--output_json={tmp_path / 'out.json'}", "--box=20,30,120,180"],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-2000:]
    figure = cv2.imread(str(tmp_path / "out.png"))
    assert figure.shape[0] == 400 and figure.shape[1] > 3 * 300  # image + two 3D views
    data = json.load(open(tmp_path / "out.json"))
    assert len(data["joints_3d_mm"]) == 17 and len(data["joint_names"]) == 17
    assert np.isfinite(np.array(data["joints_3d_mm"])).all()
    bad = subprocess.run([sys.executable, str(REPO / "tools" / "predict.py"), f"--image={image}",
                          f"--saved_model={path}", "--box=0,0,0,10"], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert bad.returncode != 0 and "box" in bad.stderr


def test_a_run_directory_alone_exports_and_predicts(trained, tmp_path):
    """Training stores its bone lengths in the run directory, so a run copied where its
    records are not (another machine; or a relative train_pattern seen from another
    directory) exports and predicts. Before: "no files match file_pattern='data/...'"."""
    config, _, lengths, root = trained
    stored = root / "run" / bone_lengths.FILE
    np.testing.assert_allclose(bone_lengths.load(str(stored)), lengths, rtol=1e-6)
    run = tmp_path / "copied_run"
    shutil.copytree(root / "run", run)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(dict(saved, train_pattern="data/gone/train-*")))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, str(REPO / "tools" / "export.py"), f"--checkpoint={run}",
                          f"--export_base={tmp_path / 'volpose'}"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.load(open(tmp_path / "volpose" / "1" / "assets.extra" / export.INFO_FILE))
    assert info["bone_lengths_file"] == str(run / bone_lengths.FILE)
    np.testing.assert_allclose(info["bone_lengths_mm"], lengths, rtol=1e-6)
    (tmp_path / "volpose" / "2").mkdir()  # a version being copied in: not a SavedModel yet
    image = tmp_path / "photo.jpg"
    image.write_bytes(_jpeg(h=120, w=90))
    results = []
    for model in (f"--checkpoint={run}", f"--saved_model={tmp_path / 'volpose'}"):
        figure = tmp_path / model[2:7] / "figure.png"  # a directory to be made
        out = subprocess.run([sys.executable, str(REPO / "tools" / "predict.py"),
                              f"--image={image}", model, f"--output={figure}",
                              f"--output_json={figure.with_suffix('.json')}"],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        assert f"wrote {figure}" in out.stdout and cv2.imread(str(figure)).shape[0] == 400
        results.append(json.load(open(figure.with_suffix(".json"))))
    assert (f"using {tmp_path / 'volpose' / '1'}, the newest version under "
            f"{tmp_path / 'volpose'}") in out.stdout
    # the same bone lengths, in the graph and out of it: the same root depth
    assert results[0]["root_depth_mm"] == pytest.approx(results[1]["root_depth_mm"], rel=1e-4)


def test_load_export_takes_a_version_or_its_base_and_refuses_other_saved_models(trained,
                                                                               tmp_path):
    config, model, lengths, _ = trained
    base = tmp_path / "volpose"
    first = export.export_saved_model(model, config, str(base), lengths)
    second = shutil.copytree(first, base / "2")  # as a newer version copied in
    (base / "10").mkdir()  # incomplete: no saved_model.pb
    assert export.versions(str(base)) == [1, 2, 10] and export.next_version(str(base)) == 11
    assert export.version_directory(str(base)) == str(second)
    assert export.version_directory(first) == first
    loaded, directory = export.load_export(str(base))
    assert directory == str(second) and set(loaded.signatures) >= set(export.SIGNATURES)
    with pytest.raises(ValueError, match="holds no SavedModel .*nor does any numbered version"):
        export.version_directory(str(tmp_path / "empty"))
    other = tf.Module()
    other.double = tf.function(lambda x: 2 * x, input_signature=[tf.TensorSpec([None])])
    tf.saved_model.save(other, str(tmp_path / "other"), signatures={"double": other.double})
    with pytest.raises(ValueError, match=r"other is not a tf_volpose export: it lacks the "
                                         r"signatures \['serving_default', 'with_intrinsics', "
                                         r"'heatmaps'\] \(it has \['double'\]\)"):
        export.load_export(str(tmp_path / "other"))


def test_predict_tool_sends_an_exif_rotated_photo_upright(trained, tmp_path):
    config, model, lengths, _ = trained
    path = export.export_saved_model(model, config, str(tmp_path / "volpose"), lengths)
    stored = cv2.resize(np.random.default_rng(1).integers(0, 255, (4, 6, 3)).astype(np.uint8),
                        (150, 100))  # 100 rows x 150 columns as stored
    image = tmp_path / "phone.jpg"
    image.write_bytes(jpeg_with_exif_orientation(stored, 6))  # displayed: 150 rows x 100 columns
    out = subprocess.run([sys.executable, str(REPO / "tools" / "predict.py"), f"--image={image}",
                          f"--saved_model={path}", f"--output={tmp_path / 'out.png'}",
                          f"--output_json={tmp_path / 'out.json'}"],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.load(open(tmp_path / "out.json"))
    assert data["box"] == [0.0, 0.0, 100.0, 150.0]
    # the graph's default principal point is the centre of the image it decoded: recover it
    # from u = f X / Z + cx, v = f Y / Z + cy over the joints (cx, cy = 75, 50 if it saw the
    # stored, sideways pixels)
    xyz, uv = np.array(data["joints_3d_mm"]), np.array(data["joints_2d_px"])
    rows = np.concatenate([np.stack([xyz[:, 0] / xyz[:, 2], np.ones(17), np.zeros(17)], 1),
                           np.stack([xyz[:, 1] / xyz[:, 2], np.zeros(17), np.ones(17)], 1)])
    focal, cx, cy = np.linalg.lstsq(rows, np.concatenate([uv[:, 0], uv[:, 1]]), rcond=None)[0]
    np.testing.assert_allclose([cx, cy], [50.0, 75.0], atol=0.5)


def _image_and_text_files(directory):
    image, text = directory / "photo.jpg", directory / "notes.txt"
    image.write_bytes(_jpeg(h=64, w=48))
    text.write_text("not an image")
    return image, text


def test_tools_report_a_wrong_path_in_one_line(tmp_path):
    """A missing checkpoint or export is one ``error:`` line naming it, exit 1, no traceback."""
    image, _ = _image_and_text_files(tmp_path)
    missing = tmp_path / "runs" / "nothing_here"
    for tool, args in (("tools/export.py", [f"--checkpoint={missing}",
                                            f"--export_base={tmp_path / 'exports'}"]),
                       ("tools/predict.py", [f"--image={image}", f"--saved_model={missing}"]),
                       ("tools/eval.py", [f"--checkpoint={missing}"]),
                       ("tools/bone_lengths.py", [f"--checkpoint={missing}"]),
                       # before the model section's minutes, not after
                       ("tools/benchmark.py", ["--sections=model,export",
                                               f"--checkpoint={missing}"]),
                       ("serving/server.py", [f"--model_base_path={missing}",
                                              f"--port={_free_port()}"])):
        assert_one_line_errors(tool, [(args, str(missing))])
    assert not (tmp_path / "exports").exists()  # nothing written
    assert_one_line_errors("tools/bone_lengths.py", [([], "give --train_pattern")])
    version = tmp_path / "volpose" / "3"  # a version where its base belongs
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    assert_one_line_errors("serving/server.py", [
        ([f"--model_base_path={version}", f"--port={_free_port()}"],
         f"it is a version itself; give its parent, --model_base_path={tmp_path / 'volpose'}"),
        ([f"--model_base_path={missing}", f"--port={_free_port()}"], "it does not exist"),
        # before: served, and every request waited forever for one of 0 inference slots
        ([f"--model_base_path={version}", "--max_concurrent=0"],
         "--max_concurrent must be a positive integer, got 0"),
        ([f"--model_base_path={version}", "--port=99999"],
         "--port must be a port number (1-65535), got 99999")])


def _first_import_after_stdlib(path):
    """Line of the first import of a module outside the standard library, and the statements
    before it (``ast`` nodes)."""
    tree = ast.parse(path.read_text())
    for index, node in enumerate(tree.body):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) else [])
        if any(name.split(".")[0] not in sys.stdlib_module_names for name in names):
            return node, tree.body[:index]
    raise AssertionError(f"{path} imports nothing outside the standard library")


def test_tools_quiet_tensorflow_before_it_loads(tmp_path):
    """TensorFlow reads TF_CPP_MIN_LOG_LEVEL once, when it loads: every tool's first
    non-stdlib import is ``_cli`` (which sets it), the serving scripts set it before any such
    import, and a tool run without it prints none of TensorFlow's C++ INFO records (the CPU
    feature notice), which a run with ``TF_CPP_MIN_LOG_LEVEL=0`` shows."""
    for path in sorted((REPO / "tools").glob("*.py")):
        if path.name != "_cli.py":
            node, _ = _first_import_after_stdlib(path)
            assert isinstance(node, ast.Import) and node.names[0].name == "_cli", path
    for path in sorted((REPO / "serving").glob("*.py")):
        _, before = _first_import_after_stdlib(path)
        assert any("TF_CPP_MIN_LOG_LEVEL" in ast.unparse(node) for node in before), path

    def stderr(level):
        env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        if level is not None:
            env["TF_CPP_MIN_LOG_LEVEL"] = level
        out = subprocess.run([sys.executable, str(REPO / "tools/export.py"),
                              f"--checkpoint={tmp_path / 'missing'}",
                              f"--export_base={tmp_path / 'exports'}"],
                             capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
        assert out.returncode == 1, out.stderr[-2000:]
        return out.stderr

    if "cpu_feature_guard" not in stderr("0"):
        pytest.skip("this TensorFlow build logs no CPU feature notice on this CPU")
    assert "cpu_feature_guard" not in stderr(None)


def _bad_image_box_and_focal_args(tmp_path):
    """``(args, message)``: bad ``--image``, ``--box`` and ``--focal`` values that
    tools/predict.py and serving/client.py both refuse before any work, and what they say."""
    image, text = _image_and_text_files(tmp_path)  # a 48x64 JPEG and a text file
    return [([f"--image={tmp_path / 'missing.jpg'}"], "missing.jpg"),
            ([f"--image={text}"], f"{text} is not a JPEG or PNG image"),
            ([f"--image={image}", "--box=0,0,0,10"], "box width and height must be positive"),
            ([f"--image={image}", "--box=0,0,nan,10"], "NaN or Inf"),
            ([f"--image={image}", "--box=1,2"], "must have shape (4,)"),
            ([f"--image={image}", "--box=48,0,10,10"], "lies outside the 48x64 image"),
            ([f"--image={image}", "--box=0,-20,10,10"], "lies outside the 48x64 image"),
            ([f"--image={image}", "--focal=-5,500"], "focal (fx,fy) must be positive"),
            ([f"--image={image}", "--focal=1000"], "must have shape (2,)")]


def test_predict_tool_reports_bad_input_in_one_line_before_loading(tmp_path):
    model = f"--saved_model={tmp_path / 'no_export'}"  # each case must fail before loading it
    cases = _bad_image_box_and_focal_args(tmp_path)
    image = f"--image={tmp_path / 'photo.jpg'}"  # the good image those cases wrote
    cases += [([image, "--focal=nan,1"], "NaN or Inf"),
              # before: the model ran, then cv2.imwrite raised a traceback for an extension
              # it cannot write
              ([image, f"--output={tmp_path / 'out.xyz'}"],
               "OpenCV writes no format with the extension '.xyz'; name it .png or .jpg"),
              ([image, "--bone_lengths=lengths.json"], "--bone_lengths is for --checkpoint")]
    assert_one_line_errors("tools/predict.py", [([model, *args], message)
                                                 for args, message in cases])


def test_client_cli_reports_bad_input_in_one_line_before_connecting(tmp_path):
    server = f"--server=127.0.0.1:{_free_port()}"  # nothing listens: each must fail before a call
    assert_one_line_errors("serving/client.py", [
        ([server, *args], message) for args, message in _bad_image_box_and_focal_args(tmp_path)])

