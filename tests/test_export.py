import dataclasses
import glob
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from tf_volpose import export, training, volume
from tf_volpose.models import hourglass
from tests.conftest import file_size_limit, small_jpeg

REPO = pathlib.Path(__file__).resolve().parents[1]


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
    images = tf.constant([small_jpeg(), small_jpeg(seed=1)])
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


def test_export_holds_the_network_once_for_its_three_signatures(trained, exported):
    """The signatures call one traced network: each convolution is in the SavedModel once.
    Before, each signature traced its own copy (3x the graph, and ~half of an export's time)."""
    _, model, _, _ = trained
    saved = saved_model_pb2.SavedModel.FromString(
        pathlib.Path(exported, "saved_model.pb").read_bytes())
    library = saved.meta_graphs[0].graph_def.library
    convolutions = sum(node.op == "Conv2D" for function in library.function
                       for node in function.node_def)
    kernels = sum(len(weight.shape) == 4 for weight in model.weights)  # one per convolution
    assert kernels > 40 and convolutions == kernels  # 48 at hourglass_depth=1


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
    images = tf.constant([small_jpeg()] * inputs["images"], tf.string)
    boxes = tf.constant([[0.0, 0.0, 90.0, 120.0]] * inputs["boxes"], shape=[inputs["boxes"], 4])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        if "focal" in inputs or "principal" in inputs:
            module.with_intrinsics(
                images, boxes, tf.fill([inputs.get("focal", inputs["images"]), 2], 100.0),
                tf.fill([inputs.get("principal", inputs["images"]), 2], 50.0))
        else:
            module.serving_default(images, boxes)


def test_loaded_export_holds_each_input_to_its_signature_shape(exported):
    """As TF Serving runs it: a loaded signature (like TF Serving) does not check shapes itself."""
    loaded = tf.saved_model.load(exported)
    images, box = tf.constant([small_jpeg()]), tf.constant([[0.0, 0.0, 90.0, 120.0]])
    focal, principal = tf.constant([[150.0, 150.0]]), tf.constant([[45.0, 60.0]])
    for name, inputs in (
            # before the shape checks: answered as if valid (the first and the focal one),
            # or failed inside the graph with messages that name no input
            ("box", dict(box=tf.constant([[0.0, 0.0, 90.0]]))),
            ("box", dict(box=tf.constant([[0.0, 0.0, 90.0, 120.0, 1.0]]))),
            ("box", dict(box=tf.constant([0.0, 0.0, 90.0, 120.0]))),
            ("box", dict(box=tf.constant([[[0.0, 0.0, 90.0, 120.0]]]))),
            ("image_bytes", dict(image_bytes=tf.constant(small_jpeg()))),
            ("image_bytes", dict(image_bytes=tf.constant([[small_jpeg()]]))),
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


def test_export_runs_in_a_tf1_session_as_tf_serving_loads_it(trained, exported, tmp_path):
    """TF Serving's C++ loader (like ``saved_model_cli run``) restores the export into a TF1
    session with the saver's restore op; before ``export._saveable`` every request failed
    there with ``Could not find variable ...`` while ``tf.saved_model.load`` worked."""
    config, model, lengths, _ = trained
    images = np.array([small_jpeg(), small_jpeg(seed=1)], object)
    boxes = np.array([[10.0, 20.0, 60.0, 80.0], [0.0, 0.0, 90.0, 120.0]], np.float32)
    keys = ("joints_3d_mm", "joints_2d_px", "joints_voxel", "confidence")
    for precision in export.PRECISIONS:
        path = exported if precision == "fp32" else export.export_saved_model(
            model, config, str(tmp_path / precision), lengths, precision=precision)
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


def test_saved_model_cli_lists_the_signatures(exported):
    path = exported
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
    images = tf.constant([small_jpeg()])
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
        tf.constant([small_jpeg()]), tf.constant([[0.0, 0.0, 90.0, 120.0]]))["heatmaps"]
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


@pytest.mark.parametrize("change, message", [
    (dict(fov_deg=0.0), "fov_deg must be in \\(0, 180\\) degrees, got 0.0"),  # NaN answers
    (dict(fov_deg=180.0), "fov_deg must be in"),
    (dict(decode="median"), "decode must be one of"),
    (dict(bone_lengths=np.ones(15)), "bone_lengths must have shape \\(16,\\)"),
    (dict(bone_lengths=np.zeros(16)), "bone_lengths must be positive")])
def test_serving_module_refuses_settings_that_would_export_a_broken_graph(trained, change,
                                                                         message):
    config, model, lengths, _ = trained
    arguments = {"bone_lengths": lengths, **change}
    with pytest.raises(ValueError, match=message):
        export.ServingModule(model, config, **arguments)


def test_a_regression_model_is_refused_by_export_and_predict(trained, tmp_path):
    """Before: a KeyError ('stack0') traceback from inside the signatures' trace."""
    config, _, lengths, _ = trained
    config = dataclasses.replace(config, model="regression", depths=(1,))
    model = training.build_model(config)
    with pytest.raises(ValueError, match="model='regression'.*has no heatmaps"):
        export.export_saved_model(model, config, str(tmp_path / "volpose"), lengths)
    assert os.listdir(tmp_path) == []  # no export base made


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
