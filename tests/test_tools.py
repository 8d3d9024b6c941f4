import ast
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tf_volpose import _startup, bone_lengths, export
from tests.conftest import (assert_one_line_errors, assert_scripts_fail_in_one_line, free_port,
                            jpeg_with_exif_orientation, small_jpeg)

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_predict_tool_writes_the_figure_and_json(exported, tmp_path):
    path = exported
    image = tmp_path / "photo.jpg"
    image.write_bytes(small_jpeg(h=240, w=180))
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
    image.write_bytes(small_jpeg(h=120, w=90))
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


def test_predict_tool_sends_an_exif_rotated_photo_upright(exported, tmp_path):
    path = exported
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
    image.write_bytes(small_jpeg(h=64, w=48))
    text.write_text("not an image")
    return image, text


def test_tools_report_a_wrong_path_in_one_line(tmp_path):
    """A missing checkpoint or export is one ``error:`` line naming it, exit 1, no traceback."""
    image, _ = _image_and_text_files(tmp_path)
    missing = tmp_path / "runs" / "nothing_here"
    version = tmp_path / "volpose" / "3"  # a version where its base belongs
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    assert_scripts_fail_in_one_line([
        ("tools/export.py", [f"--checkpoint={missing}", f"--export_base={tmp_path / 'exports'}"],
         str(missing)),
        ("tools/predict.py", [f"--image={image}", f"--saved_model={missing}"], str(missing)),
        ("tools/eval.py", [f"--checkpoint={missing}"], str(missing)),
        ("tools/bone_lengths.py", [f"--checkpoint={missing}"], str(missing)),
        ("tools/bone_lengths.py", [], "give --train_pattern"),
        # before the model section's minutes, not after
        ("tools/benchmark.py", ["--sections=model,export", f"--checkpoint={missing}"],
         str(missing)),
        ("serving/server.py", [f"--model_base_path={missing}", f"--port={free_port()}"],
         f"{str(missing)!r}: it does not exist"),
        ("serving/server.py", [f"--model_base_path={version}", f"--port={free_port()}"],
         f"it is a version itself; give its parent, --model_base_path={tmp_path / 'volpose'}"),
        # before: served, and every request waited forever for one of 0 inference slots
        ("serving/server.py", [f"--model_base_path={version}", "--max_concurrent=0"],
         "--max_concurrent must be a positive integer, got 0"),
        ("serving/server.py", [f"--model_base_path={version}", "--port=99999"],
         "--port must be a port number (1-65535), got 99999")])
    assert not (tmp_path / "exports").exists()  # nothing written


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
    """TensorFlow reads TF_CPP_MIN_LOG_LEVEL once, when it loads: every TensorFlow tool's first
    non-stdlib import is ``_cli``, which, like the serving scripts, first imports TensorFlow
    through ``_startup.import_tensorflow_quietly`` (it sets the level). A tool run without it
    prints none of TensorFlow's C++ INFO records: not the CPU feature notice, nor those
    TensorFlow writes while it loads, before it honours the level (before, six lines ahead of
    every tool's output), nor do the rendering processes that make_synthetic spawns; a run
    with ``TF_CPP_MIN_LOG_LEVEL=0`` shows them."""
    # pytorch_reference.py runs in a PyTorch-only venv and loads no TensorFlow
    # (test_benchmark.py checks its imports)
    for path in sorted((REPO / "tools").glob("*.py")):
        if path.name not in ("_cli.py", "pytorch_reference.py"):
            node, _ = _first_import_after_stdlib(path)
            assert isinstance(node, ast.Import) and node.names[0].name == "_cli", path
    for path in [REPO / "tools" / "_cli.py", *sorted((REPO / "serving").glob("*.py"))]:
        node, before = _first_import_after_stdlib(path)
        assert ast.unparse(node) == "from tf_volpose import _startup", path
        after = ast.parse(path.read_text()).body[len(before) + 1]
        assert ast.unparse(after) == "_startup.import_tensorflow_quietly()", path

    def stderr(level, script="tools/export.py", args=(f"--checkpoint={tmp_path / 'missing'}",
                                                       f"--export_base={tmp_path / 'exports'}"),
               status=1):
        env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        if level is not None:
            env["TF_CPP_MIN_LOG_LEVEL"] = level
        out = subprocess.run([sys.executable, str(REPO / script), *args],
                             capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
        assert out.returncode == status, out.stderr[-2000:]
        return out.stderr

    def info_records(text):
        return [line for line in text.splitlines()
                if re.match(r"I\d{4} \d+:\d+:\d+\.\d+ +\d+ \S+:\d+\] ", line)
                or "before absl::InitializeLog() is called" in line]

    loud = stderr("0")
    if "cpu_feature_guard" not in loud or not info_records(loud):
        pytest.skip("this TensorFlow build logs no CPU feature notice on this CPU")
    quiet = stderr(None)
    assert "cpu_feature_guard" not in quiet and not info_records(quiet), quiet[-2000:]
    assert quiet.strip().splitlines()[-1].startswith(f"error: checkpoint {str(tmp_path / 'missing')!r}")
    rendering = stderr(None, "tools/make_synthetic.py", [f"--output_dir={tmp_path / 'synthetic'}",
                                                         "--num_train=2", "--num_val=0"], 0)
    assert not info_records(rendering), rendering[-2000:]


def test_startup_records_below_the_level_are_dropped():
    banner = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
    lines = [banner,
             "I0000 00:00:1796164937.365966    8773 port.cc:153] oneDNN custom operations are on.",
             "I1201 21:32:24.000001 12 cpu_feature_guard.cc:227] This TensorFlow binary is optimized",
             "/x/y.py:3: DeprecationWarning: from Python, after a dropped record",
             "W0000 00:00:1796164937.4    8773 some.cc:1] a warning",
             "E0000 00:00:1796164939.875402    8773 cuda_platform.cc:52] failed call to cuInit",
             "F0000 00:00:1796164939.9    8773 x.cc:9] fatal",
             "Ixxxx not a record; partial line without newline"]
    text = "\n".join(lines)
    below = _startup.without_records_below
    assert below(text, 0) == text
    assert below(text, 1) == "\n".join(lines[3:])
    assert below(text, 2) == "\n".join([lines[3], *lines[5:]])
    assert below(text, 3) == "\n".join([lines[3], *lines[6:]])
    assert below(f"{banner}\r\nkept\r\n", 1) == "kept\r\n"


@pytest.mark.parametrize("fails", [False, True])
def test_startup_import_holds_back_fd2_and_shows_everything_when_it_fails(
        monkeypatch, capfd, fails):
    """What the import writes to file descriptor 2 (where C++ writes) is written out
    after it, filtered; a failing import shows all of it, then raises."""
    record = "I0000 00:00:1796164937.365966    8773 port.cc:153] oneDNN custom operations are on.\n"

    def fake_import(name):
        assert name == "tensorflow"
        os.write(2, (record + "a line of its own\n").encode())
        if fails:
            raise ImportError("no TensorFlow here")

    monkeypatch.delitem(sys.modules, "tensorflow")  # restored after the test
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    monkeypatch.setattr(_startup.importlib, "import_module", fake_import)
    capfd.readouterr()
    if fails:
        with pytest.raises(ImportError, match="no TensorFlow here"):
            _startup.import_tensorflow_quietly()
    else:
        _startup.import_tensorflow_quietly()
    os.write(2, b"after\n")  # descriptor 2 is the test's again
    assert capfd.readouterr().err == (record if fails else "") + "a line of its own\nafter\n"


def _bad_image_box_and_focal_args(tmp_path):
    """``(args, message)``: bad ``--image``, ``--box`` and ``--focal`` values that
    tools/predict.py and serving/client.py both refuse before any work, and what they say."""
    image, text = _image_and_text_files(tmp_path)  # a 48x64 JPEG and a text file
    # before: "[Errno 2] No such file or directory: '.../missing.jpg'"
    return [([f"--image={tmp_path / 'missing.jpg'}"],
             f"error: {tmp_path / 'missing.jpg'}: No such file or directory"),
            ([f"--image={tmp_path}"], f"error: {tmp_path}: Is a directory"),
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
    server = f"--server=127.0.0.1:{free_port()}"  # nothing listens: each must fail before a call
    assert_one_line_errors("serving/client.py", [
        ([server, *args], message) for args, message in _bad_image_box_and_focal_args(tmp_path)])
