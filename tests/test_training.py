import dataclasses
import functools
import glob
import importlib.util
import io
import json
import math
import os
import pathlib
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from tf_volpose import skeleton, training
from tf_volpose.data import pipeline, records, synthetic
from tests.conftest import (TINY, assert_one_line_error, copy_to_file_system, run_scripts,
                            tiny_config, write_fake_motion, write_undecodable_records)

REPO = pathlib.Path(__file__).resolve().parents[1]
@functools.lru_cache(maxsize=1)
def _load_tool():
    if str(REPO / "tools") not in sys.path:
        sys.path.insert(0, str(REPO / "tools"))  # as when the script runs: it imports _cli
    spec = importlib.util.spec_from_file_location("train_tool", REPO / "tools" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.cfg"))


def test_progress_is_a_live_line_on_a_terminal_and_plain_lines_in_a_log():
    """Before, a log file (nohup, a batch job) got the live line's carriage returns: one
    line of the file grew by a rewrite twice a second for the whole run."""
    tool = _load_tool()
    step = dict(step=1, loss=0.5, images_per_sec=80.0, learning_rate=1e-3, eta_sec=3661)
    event = dict(event="checkpoint", path="runs/x/ckpt-10")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, expected in (
            (io.StringIO(), "step       1  loss 0.500000    80.0 img/s  lr 1.00e-03  ETA 01:01:01\n"
                            "step       3  loss 0.500000    80.0 img/s  lr 1.00e-03  ETA 01:01:01\n"
                            "saved checkpoint runs/x/ckpt-10\n"),
            (Terminal(), "\rstep       1  loss 0.500000    80.0 img/s  lr 1.00e-03  ETA 01:01:01   "
                         "\rstep       2  loss 0.500000    80.0 img/s  lr 1.00e-03  ETA 01:01:01   "
                         "\rstep       3  loss 0.500000    80.0 img/s  lr 1.00e-03  ETA 01:01:01   "
                         "\nsaved checkpoint runs/x/ckpt-10\n")):
        now = [0.0]
        progress = tool.TerminalProgress(stream, log_every_s=30.0, clock=lambda: now[0])
        for number, at in ((1, 0.0), (2, 10.0), (3, 31.0)):
            now[0] = at
            progress(dict(step, step=number))
        progress(event)
        progress.end_line()  # nothing live after an event: adds nothing
        assert stream.getvalue() == expected


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_parses_and_dry_run_builds(name, tiny_data, tmp_path, monkeypatch):
    text = (REPO / "configs" / name).read_text()
    assert text.startswith("#") and "python tools/train.py --flagfile=configs/" + name in text
    tool = _load_tool()
    flag_values = flags.FlagValues()
    tool.define_config_flags(flag_values)
    monkeypatch.chdir(REPO)
    flag_values(["train", f"--flagfile=configs/{name}", f"--model_dir={tmp_path}",
                 f"--train_pattern={tiny_data}/train-*", f"--val_pattern={tiny_data}/val-*",
                 "--features=8", "--input_size=64", "--hourglass_depth=1", "--init_checkpoint=",
                 "--synthetic_dir="])
    config = tool.config_from_flags(flag_values)
    # only the MPII stage (2D heatmaps) has no root depth, and so stores no bone lengths
    assert config.predicts_3d == (name != "mpii_2d.cfg")
    result = training.train(config, dry_run=True)
    assert result["params"] > 0 and "Total params" in result["summary"]
    assert not glob.glob(str(tmp_path / "ckpt-*"))  # a dry run writes no checkpoint


def test_tools_rebuild_a_run_from_its_config_json_with_flags_on_top(tmp_path):
    tool = _load_tool()
    saved = training.TrainConfig(model_dir=str(tmp_path), features=16, depths=(2, 8),
                                 loss_weights=(1.0, 4.0), flip_prob=0.0, conv_bias=True)
    (tmp_path / "config.json").write_text(saved.to_json())
    _write_checkpoint(tmp_path, 5)

    def parsed(*args):
        flag_values = flags.FlagValues()
        tool.define_config_flags(flag_values)
        flag_values(["eval", *args])
        return flag_values

    # the model directory or a checkpoint file in it: the run's config, not the flag defaults
    assert tool.config_for_checkpoint(str(tmp_path), parsed()) == saved
    assert tool.config_for_checkpoint(str(tmp_path / "ckpt-5"), parsed()) == saved
    # given flags override their fields only
    config = tool.config_for_checkpoint(str(tmp_path), parsed("--decode=quadratic",
                                                              "--depths=4,16"))
    assert (config.decode, config.depths) == ("quadratic", (4, 16))
    assert dataclasses.replace(config, decode=saved.decode, depths=saved.depths) == saved
    with pytest.raises(ValueError, match="flip_prob"):
        tool.config_for_checkpoint(str(tmp_path), parsed("--flip_prob=2"))
    with pytest.raises(ValueError, match=r"--depths takes comma-separated int values, "
                                         r"got '4,x16'"):
        tool.config_for_checkpoint(str(tmp_path), parsed("--depths=4,x16"))
    with pytest.raises(ValueError, match=r"--loss_weights takes comma-separated float values"):
        tool.config_from_flags(parsed("--loss_weights=1,two"))
    # no config.json: the flags alone
    (tmp_path / "bare").mkdir()
    _write_checkpoint(tmp_path / "bare", 1)
    assert tool.config_for_checkpoint(str(tmp_path / "bare"), parsed()) == \
        tool.config_from_flags(parsed())
    # a path that holds no checkpoint is named before anything is read
    (tmp_path / "untrained").mkdir()
    with pytest.raises(ValueError, match="untrained.*no checkpoint in this directory"):
        tool.config_for_checkpoint(str(tmp_path / "untrained"), parsed())
    with pytest.raises(ValueError, match=r"ckpt-7.*neither a model directory nor a checkpoint"):
        tool.config_for_checkpoint(str(tmp_path / "ckpt-7"), parsed())


def _write_checkpoint(directory, step):
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)), str(directory),
                                         max_to_keep=1)
    return manager.save(checkpoint_number=step)


def test_checkpoint_path_resolves_or_names_the_problem(tmp_path):
    written = _write_checkpoint(tmp_path, 3)
    assert training.checkpoint_path(str(tmp_path)) == written        # a model directory
    assert training.checkpoint_path(written) == written                # a checkpoint prefix
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="init_checkpoint .*empty.*no checkpoint"):
        training.checkpoint_path(str(tmp_path / "empty"), "init_checkpoint")
    for missing in (tmp_path / "ckpt-4", tmp_path / "nowhere" / "ckpt-3"):
        with pytest.raises(ValueError, match="neither a model directory nor a checkpoint"):
            training.checkpoint_path(str(missing))
    # a step that is not there: the error lists the ones that are, in step order
    tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(tmp_path / "ckpt-12"))
    with pytest.raises(ValueError, match=f"no {tmp_path}/ckpt-4.index\\); {tmp_path} holds "
                                         f"ckpt-3, ckpt-12$"):
        training.checkpoint_path(str(tmp_path / "ckpt-4"))


def test_a_model_dir_that_cannot_be_one_fails_before_the_model_is_built(tiny_data, tmp_path,
                                                                       monkeypatch):
    """Before: "[Errno 17] File exists: 'afile/config.json'" after data and model were built."""
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(training, "build_model", None)  # must not be reached
    with pytest.raises(ValueError, match=f"model_dir '{tmp_path}/afile' is a file, not a "
                                         f"directory"):
        training.train(tiny_config(tiny_data, tmp_path / "afile"))
    # nor a synthetic_dir to render into (before: "[Errno 17] File exists")
    with pytest.raises(ValueError, match=f"synthetic_dir '{tmp_path}/afile' is a file"):
        training.train(tiny_config(tiny_data, tmp_path / "run",
                                   train_pattern=f"{tmp_path}/afile/t-*",
                                   synthetic_dir=str(tmp_path / "afile")))


def test_train_writes_checkpoints_and_summaries_and_resumes_exactly(tiny_data, tmp_path):
    events = []
    first = training.train(tiny_config(tiny_data, tmp_path), progress=events.append)
    assert first["step"] == 4 and np.isfinite(first["loss"])
    assert os.path.exists(str(tmp_path / "ckpt-4.index"))
    assert [v["step"] for v in first["validation"]] == [0, 2, 4]
    tags = set()
    for path in glob.glob(str(tmp_path / "train" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    for tag in ("loss/total", "loss/stack0", "loss/stack1", "learning_rate", "perf/images_per_sec",
                "val/mpjpe_mm_gt_root", "val/mpjpe_voxels", "input_skeletons",
                "heatmaps_xy/stack1", "heatmaps_xz/stack1"):
        assert tag in tags, tag
    # a restart at the same train_steps restores the step and the weights exactly
    again = training.train(tiny_config(tiny_data, tmp_path), progress=events.append)
    assert again["step"] == 4
    assert training.weights_digest(again["model"]) == training.weights_digest(first["model"])
    assert any(e.get("event") == "restored" and e["step"] == 4 for e in events)
    more = training.train(tiny_config(tiny_data, tmp_path, train_steps=6))
    assert more["step"] == 6 and os.path.exists(str(tmp_path / "ckpt-6.index"))
    assert training.load_config(str(tmp_path)).train_steps == 6
    assert training.load_config(str(tmp_path)).conv_bias is False
    # a run saved before the conv_bias field existed was built with the biases
    old = tmp_path / "old_run"
    old.mkdir()
    values = json.loads((tmp_path / "config.json").read_text())
    del values["conv_bias"]
    (old / "config.json").write_text(json.dumps(values))
    assert training.load_config(str(old)).conv_bias is True
    assert training.load_config(str(old)).flip_prob == 0.5  # what runs before the field used
    # a damaged config.json names the file (before: "Expecting value: line 1 column 1
    # (char 0)", an AttributeError, or a field's error naming no file)
    path = old / "config.json"
    for text, message in (("", "cannot read the training config .*config.json: Expecting value"),
                          ("[1, 2]", "config.json holds no training config .* got list"),
                          (json.dumps(dict(values, batch_size=0)),
                           "config.json: batch_size must be positive, got 0")):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            training.load_config(str(old))


def test_flip_prob_reaches_the_training_pipeline(tiny_data, tmp_path):
    """Same seed, flip_prob 0 vs 1: the crops are mirrors and the joints swap sides."""
    batches = []
    for flip_prob in (0.0, 1.0):
        config = tiny_config(tiny_data, tmp_path, flip_prob=flip_prob)
        ds = pipeline.make_dataset(config.train_pattern, training=True, batch_size=4,
                                   **training.pipeline_options(config))
        batches.append(next(iter(ds)))
    (plain, plain_t), (flipped, flipped_t) = batches
    np.testing.assert_allclose(flipped["image"].numpy(), plain["image"].numpy()[:, :, ::-1],
                               atol=1e-4)
    flip_index = skeleton.get_joint_set(config.joint_set).flip_index
    expected = plain_t["joints_voxel"].numpy()[:, flip_index]
    expected[..., 0] = config.xy_res - expected[..., 0]
    np.testing.assert_allclose(flipped_t["joints_voxel"].numpy(), expected, atol=1e-4)
    # without augmentation nothing flips, whatever flip_prob says
    config = tiny_config(tiny_data, tmp_path, flip_prob=1.0, augment=False)
    assert training.pipeline_options(config)["augmentation"].flip_prob == 0.0


def test_init_checkpoint_restores_matching_layers_by_name(tiny_data, tmp_path):
    source = training.train(tiny_config(tiny_data, tmp_path / "src", train_steps=2))
    events = []
    # one more stack: stack0/1 layers match by name, the new ones do not
    target = training.train(tiny_config(tiny_data, tmp_path / "dst", depths=(1, 4, 4),
                                        train_steps=1, init_checkpoint=str(tmp_path / "src"),
                                        val_pattern=""),
                            progress=events.append, dry_run=True)
    init = next(e for e in events if e.get("event") == "init")
    assert "stem_conv/kernel" in init["restored"]
    assert any(p.startswith("s2_") for p in init["not_found"])
    src = {w.path: w.numpy() for w in source["model"].weights}
    np.testing.assert_array_equal(target["model"].get_layer("stem_conv").kernel.numpy(),
                                  src["stem_conv/kernel"])
    with pytest.raises(ValueError, match="init_checkpoint"):
        training.restore_by_name(target["model"], str(tmp_path / "nothing"))


def test_network_b_trains_alone_on_mocap_and_initialises_the_decoupled_model(tiny_data, tmp_path,
                                                                              rng):
    """Sec. 3.3: network B (2D heatmaps -> volumes) learns from MoCap's pose-only records;
    the decoupled model then takes A's weights from a 2D run and B's from that run."""
    from tf_volpose import evaluation, export
    from tf_volpose.data import mocap
    write_fake_motion(tmp_path / "motion.npz", rng, frames=2)
    mocap.convert(str(tmp_path / "motion.npz"), str(tmp_path / "mocap"))
    sizes = dict(features=8, input_size=64, hourglass_depth=1)
    lifting = training.TrainConfig(**dict(TINY, **sizes, depths=(2, 4)), model="lifting",
                                   model_dir=str(tmp_path / "b"), train_steps=4, deterministic=True,
                                   train_pattern=str(tmp_path / "mocap" / "train-*"),
                                   val_pattern=str(tmp_path / "mocap" / "test-*"))
    events = []
    run_b = training.train(lifting, progress=events.append)
    assert run_b["model"].input_shape == (None, 16, 16, 17) and math.isfinite(run_b["loss"])
    assert [e["step"] for e in run_b["validation"]] == [0, 2, 4]
    assert all(e["mpjpe_mm"] > 0 for e in run_b["validation"])  # the records' 3D joints
    assert glob.glob(str(tmp_path / "b" / "train" / "events.*"))
    assert (tmp_path / "b" / "bone_lengths.json").exists()
    # its root-relative error on the test subjects, from ground-truth 2D heatmaps
    options = evaluation.EvalOptions(decode="local_softargmax")
    result, _ = evaluation.evaluate(lifting, options, checkpoint=str(tmp_path / "b"))
    walking = result["mpjpe_mm"]["Walking"]
    assert walking["mean"] > 0 and walking["frames"] == 8
    with pytest.raises(ValueError, match="takes 2D heatmaps, not an image"):
        evaluation.evaluate(lifting, dataclasses.replace(options, flip_test=True),
                            checkpoint=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="export the decoupled model initialised from it"):
        export.export_saved_model(run_b["model"], lifting, str(tmp_path / "exports"),
                                  np.ones(16))
    assert not (tmp_path / "exports").exists()
    # network A: a 2D run (MPII's part), one stack of d = 1
    run_a = training.train(tiny_config(tiny_data, tmp_path / "a", depths=(1,), train_steps=1,
                                       val_pattern="", **sizes))
    init = []
    joint = training.train(tiny_config(tiny_data, tmp_path / "ab", model="decoupled",
                                       decoupled_2d_stacks=1, depths=(2, 4), val_pattern="",
                                       init_checkpoint=f"{tmp_path / 'a'}, {tmp_path / 'b'}",
                                       **sizes), dry_run=True, progress=init.append)
    init = next(e for e in init if e.get("event") == "init")
    assert init["not_found"] == [] and len(init["restored"]) == len(joint["model"].weights)
    weights = {w.path: w.numpy() for w in joint["model"].weights}
    for run in (run_a, run_b):
        for w in run["model"].weights:
            np.testing.assert_array_equal(weights[w.path], w.numpy())


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path, learning_rate=1e30, checkpoint_every=1,
                         train_steps=50, val_pattern="")
    with pytest.raises(training.TrainingDivergedError, match=r"at step \d+") as info:
        training.train(config)
    latest = tf.train.latest_checkpoint(str(tmp_path))
    assert latest is not None and latest in str(info.value)
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        if name.startswith("weights_by_name/"):
            assert np.isfinite(reader.get_tensor(name)).all(), name


def test_bad_config_values_raise():
    with pytest.raises(ValueError, match="strategy"):
        training.TrainConfig(strategy="tpu")
    with pytest.raises(ValueError, match="loss_weights"):
        training.TrainConfig(depths=(1, 64), loss_weights=(1.0,))
    with pytest.raises(ValueError, match="batch_size"):
        training.TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"flip_prob must be in \[0, 1\], got 1.5"):
        training.TrainConfig(flip_prob=1.5)
    with pytest.raises(ValueError, match=r"loss must be one of \('volumetric', 'integral'\)"):
        training.TrainConfig(loss="l1")
    # an integral-loss volume is decoded by its soft-argmax, not its peak
    with pytest.raises(ValueError, match="decode must be softargmax with loss='integral', "
                                         "got 'local_softargmax'"):
        training.TrainConfig(loss="integral")
    with pytest.raises(ValueError, match="for model='regression'"):
        training.TrainConfig(model="regression", loss="integral", decode="softargmax")
    with pytest.raises(ValueError, match="distribution_loss_weight must be 0, or positive "
                                         "with loss='integral', got 0.1"):
        training.TrainConfig(distribution_loss_weight=0.1)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_training_loop_under_mixed_precision(tiny_data, tmp_path, policy):
    result = training.train(tiny_config(tiny_data, tmp_path, mixed_precision=policy, train_steps=2,
                                        val_pattern=""))
    assert result["step"] == 2 and np.isfinite(result["loss"])
    assert result["model"].get_layer("s0_head").compute_dtype == policy.split("_")[1]
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards


def test_tool_reports_missing_or_unreachable_data_without_a_traceback(tiny_data, tmp_path):
    """A file system TensorFlow cannot ask (no network, no access; here an unknown
    scheme) is one line naming the pattern or directory, as a missing file is."""
    local = [f"--train_pattern={tiny_data}/train-*", "--val_pattern=", "--features=8",
             "--input_size=64", "--depths=1,4", "--dry_run"]
    no_files, *unreachable = run_scripts([
        ("tools/train.py", [f"--model_dir={tmp_path}", f"--train_pattern={tmp_path}/none-*",
                            "--dry_run"]),
        ("tools/train.py", [f"--model_dir={tmp_path}", "--train_pattern=nofs://bucket/train-*",
                            "--dry_run"]),
        ("tools/train.py", ["--model_dir=nofs://bucket/run", *local]),
        ("tools/eval.py", ["--checkpoint=nofs://bucket/run"])])
    assert no_files.returncode == 1 and "Traceback" not in no_files.stderr
    assert "error: no files match" in no_files.stderr
    assert no_files.stderr.strip().splitlines()[-1].startswith("Convert the dataset first")
    for out, message in zip(unreachable, [
            "cannot list 'nofs://bucket/train-*': File system scheme 'nofs' not implemented",
            "model_dir 'nofs://bucket/run' cannot be reached: File system scheme 'nofs'",
            "checkpoint 'nofs://bucket/run.index' cannot be reached"]):
        assert_one_line_error(out, message)


def test_synthetic_set_is_rendered_when_missing_or_interrupted_and_kept_when_complete(
        tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "generate", functools.partial(synthetic.generate, workers=1))
    directory = tmp_path / "synthetic"
    config = tiny_config(directory, tmp_path / "run", synthetic_dir=str(directory),
                         synthetic_train=4, synthetic_val=2)

    def data_messages():
        events = []
        training.train(config, dry_run=True, progress=events.append)
        return [e["message"] for e in events if e.get("event") == "data"]

    assert data_messages() == [
        f"rendering 4 + 2 synthetic records into {directory}: no records match train_pattern",
        "wrote {'train': 4, 'val': 2} records"]
    # what a Ctrl-C while rendering leaves: complete shards, no manifest
    (directory / synthetic.MANIFEST_FILE).unlink()
    os.remove(directory / "val-00000.tfrecord")
    messages = data_messages()
    assert "the shards there are not a complete set (an interrupted rendering" in messages[0]
    assert (directory / "val-00000.tfrecord").exists()
    # a complete set is used as it is, other counts or not: nothing is rendered again
    before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    assert data_messages() == []
    config = dataclasses.replace(config, synthetic_train=8)
    messages = data_messages()
    assert len(messages) == 1 and messages[0].startswith(f"using the synthetic set in {directory} "
                                                        f"as it was rendered")
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == before
    # training data elsewhere: the synthetic directory is not looked at
    elsewhere = dataclasses.replace(config, synthetic_dir=str(tmp_path / "unused"))
    training.train(elsewhere, dry_run=True)
    assert not (tmp_path / "unused").exists()


def test_patterns_that_would_miss_the_rendered_set_are_refused_before_rendering(
        tmp_path, monkeypatch):
    """Given only another synthetic_dir (the config's patterns still point at
    data/synthetic), a run rendered there for minutes, then failed with "no files
    match" and a hint to convert a dataset. Now it is refused before rendering."""
    # the relative pattern below must find nothing: not the repository's own data/synthetic,
    # which the default config renders
    monkeypatch.chdir(tmp_path)
    rendered = []
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: rendered.append(a) or {})
    directory = tmp_path / "synthetic"
    config = tiny_config(directory, tmp_path / "run", synthetic_dir=str(directory),
                         synthetic_train=4, synthetic_val=2)
    for kw, name, split in (({"train_pattern": str(tmp_path / "elsewhere" / "train-*")},
                             "train_pattern", "train"),
                            ({"val_pattern": "data/synthetic/val-*"}, "val_pattern", "val")):
        with pytest.raises(ValueError) as e:
            training.train(dataclasses.replace(config, **kw), dry_run=True)
        assert str(e.value) == (
            f"{name} {kw[name]!r} matches no files and would not match the synthetic records "
            f"rendered into synthetic_dir {str(directory)!r} (such as {split}-00000.tfrecord): "
            f"point it into that directory, e.g. {str(directory / (split + '-*'))!r}")
    assert rendered == [] and not directory.exists()
    # patterns that do reach it, through a symlink or with a comma, render as before
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for kw in ({"synthetic_dir": str(tmp_path / "link"),
                "train_pattern": str(tmp_path / "real" / "train-*"),
                "val_pattern": str(tmp_path / "real" / "val-*")},
               {"train_pattern": f"{tmp_path / 'elsewhere' / 'x-*'}, {directory / 'train-*'}"}):
        rendered.clear()
        with pytest.raises(ValueError, match="no files match"):  # the stub wrote nothing
            training.train(dataclasses.replace(config, **kw), dry_run=True)
        assert len(rendered) == 1


def test_records_that_yield_nothing_are_named_before_a_checkpoint(tiny_data, tmp_path):
    """Files that match but hold no usable record (here records whose image does not
    decode) end the repeated training stream at once, or leave validation empty: each is
    a ValueError naming the pattern, not TensorFlow's "End of sequence", and no
    checkpoint is written. Text named like a shard is refused before, by its framing."""
    write_undecodable_records(tmp_path, "junk")
    (tmp_path / "text-00000.tfrecord").write_bytes(b"not a TFRecord file\n" * 100)
    for field in ("train_pattern", "val_pattern"):
        model_dir = tmp_path / field
        config = tiny_config(tiny_data, model_dir, **{field: str(tmp_path / "junk-*")})
        with pytest.raises(ValueError, match=f"{field} '.*junk-\\*' yields no usable records"):
            training.train(config)
        config = tiny_config(tiny_data, model_dir, **{field: str(tmp_path / "text-*")})
        with pytest.raises(ValueError, match=r"text-00000.tfrecord: record 0 at byte 0 .*"
                                             r"not a TFRecord file"):
            training.train(config)
        assert not glob.glob(str(model_dir / "ckpt-*"))


def test_resuming_into_another_models_run_is_refused_before_restoring(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path, train_steps=2, val_pattern="", image_summary_every=0)
    training.train(config)
    before = {p: open(p, "rb").read() for p in glob.glob(str(tmp_path / "ckpt-*"))}
    wider = dataclasses.replace(config, features=2 * config.features, train_steps=4)
    with pytest.raises(ValueError, match=r"model_dir '.*' holds a run to resume, but its "
                       r"checkpoint '.*ckpt-2' does not match the model of this config: \d+ "
                       r"weights differ in shape"):
        training.train(wider)
    assert {p: open(p, "rb").read() for p in glob.glob(str(tmp_path / "ckpt-*"))} == before


@pytest.mark.parametrize("model_type,head_name", [("volumetric", "s1_head"),
                                                 ("decoupled", "b_s1_head")])
def test_training_forward_leaves_the_last_head_to_the_loss_with_equal_gradients(
        rng, model_type, head_name):
    config = training.TrainConfig(model=model_type, features=16, input_size=64, hourglass_depth=2,
                                  depths=(2, 8), decoupled_2d_stacks=1)
    config = dataclasses.replace(config, loss_weights=(0.5,) * (len(config.stack_depths) - 1)
                                 + (2.0,))
    model = training.build_model(config)
    images = tf.constant(rng.uniform(0, 1, (3, 64, 64, 3)).astype(np.float32))
    targets = {"joints_voxel": tf.constant(rng.uniform(-2, 18, (3, 17, 3)) * [1, 1, 4],
                                           tf.float32),
               "mask": tf.constant(rng.uniform(0, 1, (3, 17)) > 0.2, tf.float32)}
    results = []
    for fuse_head in (False, True):
        forward = training.TrainingForward(config, model, fuse_head=fuse_head)
        with tf.GradientTape() as tape:
            per_example, per_stack = training.compute_loss(config, forward(images), targets)
            loss = tf.reduce_mean(per_example)
        grads = tape.gradient(loss, model.trainable_variables)
        results.append((forward, per_example.numpy(), [l.numpy() for l in per_stack], grads))
    (plain, loss, stacks, grads), (fused, loss_f, stacks_f, grads_f) = results
    assert plain.head is None and fused.head.name == head_name
    assert len(stacks_f) == len(config.stack_depths)
    np.testing.assert_allclose(loss_f, loss, rtol=1e-5)
    np.testing.assert_allclose(stacks_f, stacks, rtol=1e-5)
    assert len(grads_f) == len(grads) and all(g is not None for g in grads_f)
    for variable, g_fused, g in zip(model.trainable_variables, grads_f, grads):
        g = g.numpy()
        np.testing.assert_allclose(g_fused.numpy(), g, rtol=1e-4, atol=1e-4 * np.abs(g).max(),
                                   err_msg=variable.path)


def test_integral_loss_trains_through_the_heatmaps_and_exports_its_soft_argmax(tiny_data,
                                                                               tmp_path, rng):
    """Sun et al.'s integral loss: the last head is not fused (the loss needs the heatmaps),
    the loss is the stacks' soft-argmax error, and the export decodes it the same way."""
    from tf_volpose import export, losses
    config = tiny_config(tiny_data, tmp_path / "run", loss="integral", decode="softargmax",
                         loss_weights=(1.0, 2.0))
    model = training.build_model(config)
    forward = training.TrainingForward(config, model)
    assert forward.head is None and forward.trunk is None
    images = tf.constant(rng.uniform(0, 1, (2, 64, 64, 3)).astype(np.float32))
    joints = tf.constant(rng.uniform(1, 15, (2, 17, 3)) * [1, 1, 0.25], tf.float32)  # z on 4
    targets = {"joints_voxel": joints, "mask": tf.ones([2, 17])}
    per_example, per_stack = training.compute_loss(config, forward(images), targets)
    outputs = model(images, training=True)
    for got, d, stack in zip(per_stack, (1, 4), ("stack0", "stack1")):
        expected = losses.integral_loss_per_example(outputs[stack], joints * [1, 1, d / 4], d)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4)
    np.testing.assert_allclose(per_example.numpy(), (per_stack[0] + 2 * per_stack[1]).numpy(),
                               rtol=1e-5)
    hybrid = dataclasses.replace(config, distribution_loss_weight=0.25)
    _, hybrid_stack = training.compute_loss(hybrid, forward(images), targets)
    for got, integral, d, stack in zip(hybrid_stack, per_stack, (1, 4), ("stack0", "stack1")):
        kl = losses.distribution_loss_per_example(outputs[stack], joints * [1, 1, d / 4], d,
                                                  fine_depth=4)
        np.testing.assert_allclose(got.numpy(), (integral + 0.25 * kl).numpy(), rtol=1e-4)
    run = training.train(config)
    assert run["step"] == 4 and math.isfinite(run["loss"]) and run["validation"]
    assert training.load_config(str(tmp_path / "run")).loss == "integral"
    assert export.ServingModule(run["model"], config, np.ones(16)).decode == "softargmax"
    # other runs export as before, whatever decoding their validation used
    argmax_run = dataclasses.replace(config, loss="volumetric", decode="argmax")
    assert export.ServingModule(run["model"], argmax_run, np.ones(16)).decode == "local_softargmax"


def test_training_forward_runs_the_regression_model_as_it_is(rng):
    config = training.TrainConfig(model="regression", features=8, input_size=64, depths=(1, 4))
    model = training.build_model(config)
    forward = training.TrainingForward(config, model)
    assert forward.head is None and forward.trunk is None
    images = tf.constant(rng.uniform(0, 1, (2, 64, 64, 3)).astype(np.float32))
    np.testing.assert_allclose(forward(images)["coords"].numpy(),
                               model(images, training=True)["coords"].numpy(), rtol=1e-6)


def test_records_and_model_dir_on_a_tensorflow_file_system(tiny_data, tmp_path):
    """Records and runs may live where tf.io.gfile reads (gs://, s3://, hdfs://):
    here TensorFlow's in-process ram:// file system stands in for a bucket. Before,
    a ``gs://`` pattern was "no files match" (Python's glob) and a run's config.json
    could not be read back."""
    bucket = f"ram://{tmp_path.name}"
    copy_to_file_system(f"{bucket}/data", sorted(tiny_data.glob("*.tfrecord")))
    assert pipeline.list_files(f"{bucket}/data/train-*") == [
        f"{bucket}/data/{p.name}" for p in sorted(tiny_data.glob("train-*"))]
    config = tiny_config(tiny_data, f"{bucket}/run", train_pattern=f"{bucket}/data/train-*",
                         val_pattern=f"{bucket}/data/val-*", train_steps=2, image_summary_every=0,
                         synthetic_dir=str(tmp_path / "synthetic"))
    keras.utils.set_random_seed(3)  # the same initial weights in both runs
    result = training.train(config)
    assert result["step"] == 2 and result["checkpoint"] == f"{bucket}/run/ckpt-2"
    assert [v["step"] for v in result["validation"]] == [0, 2]
    assert tf.io.gfile.glob(f"{bucket}/run/train/events.out.tfevents.*")  # TensorBoard
    assert training.load_config(config.model_dir) == config
    assert not (tmp_path / "synthetic").exists()  # real data elsewhere: nothing rendered
    # the same run on local files trains the same weights
    keras.utils.set_random_seed(3)
    local = training.train(tiny_config(tiny_data, tmp_path / "local", train_steps=2,
                                       image_summary_every=0, val_pattern=""))
    assert training.weights_digest(result["model"]) == training.weights_digest(local["model"])


def test_rendering_export_and_conversion_refuse_a_url_before_writing(tiny_data, tmp_path):
    from tf_volpose import export
    config = training.TrainConfig(**dict(TINY, train_pattern=str(tmp_path / "none-*"),
                                         synthetic_dir=f"ram://{tmp_path.name}/synthetic"))
    with pytest.raises(ValueError, match=r"synthetic_dir 'ram://.*/synthetic' must be a local "
                                         r"path: it is written with local renames and locks"):
        training.train(config, dry_run=True)
    # with records elsewhere nothing is rendered, so the URL does not matter
    training.train(dataclasses.replace(config, train_pattern=str(tiny_data / "train-*"),
                                       model_dir=str(tmp_path / "run")), dry_run=True)
    with pytest.raises(ValueError, match=r"export_base 'gs://bucket/volpose' must be a local"):
        export.export_saved_model(None, None, "gs://bucket/volpose", None)
    # the converters' writer: os.makedirs would have made a local ./gs:/bucket
    with pytest.raises(ValueError, match=r"output_dir 'gs://bucket/h36m' must be a local"):
        records.ShardedWriter("gs://bucket/h36m", "train")
    assert not os.path.exists("gs:")
