"""Trains a tf_volpose model: flags -> TrainConfig -> training.train.

    python tools/train.py --flagfile=configs/synthetic.cfg     # the embedded default
    python tools/train.py --flagfile=configs/h36m.cfg          # the paper's Table 4 model

One flag per TrainConfig field (``--helpfull`` lists them); ``--dry_run``
builds the data and the model, prints the summary and the parameter count, and exits.
"""

import dataclasses
import sys
import time
import typing

import _cli  # first, before TensorFlow loads; tools/ is on sys.path when this script runs

from absl import app, flags

from tf_volpose import bone_lengths, hardware, skeleton, training

FLAGS = flags.FLAGS
flags.DEFINE_bool("dry_run", False, "Build data and model, print the summary, exit.")


def define_config_flags(flag_values=FLAGS):
    """One flag per TrainConfig field, with the field's default and help."""
    for field in dataclasses.fields(training.TrainConfig):
        help_text = field.metadata.get("help", field.name)
        default = field.default
        if typing.get_origin(field.type) is tuple:
            item = typing.get_args(field.type)[0]
            define = flags.DEFINE_list
            default = [str(v) for v in default]
            help_text += f" (comma-separated {item.__name__})"
        else:
            define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
                      float: flags.DEFINE_float, str: flags.DEFINE_string}[field.type]
        define(field.name, default, help_text, flag_values=flag_values)


def config_from_flags(flag_values=FLAGS, base=None):
    """The :class:`TrainConfig` the flags describe.

    With ``base`` (a config), only the flags given on the command line or in a
    flagfile replace its fields; the others keep ``base``'s values.
    """
    values = {}
    for field in dataclasses.fields(training.TrainConfig):
        flag = flag_values[field.name]
        if base is not None and not flag.present:
            continue
        value = flag.value
        if typing.get_origin(field.type) is tuple:
            item = typing.get_args(field.type)[0]
            try:
                value = tuple(item(v) for v in value)
            except ValueError:
                raise ValueError(f"--{field.name} takes comma-separated {item.__name__} values, "
                                 f"got {','.join(value)!r}") from None
        values[field.name] = value
    if base is None:
        return training.TrainConfig(**values)
    return dataclasses.replace(base, **values)


def config_for_checkpoint(checkpoint, flag_values=FLAGS):
    """The config of a trained run, for the tools that load one (eval, export, predict).

    The run's ``config.json`` (beside the checkpoint file, or in the model
    directory) with the flags given explicitly or in a flagfile on top, so
    ``--checkpoint=RUN`` alone rebuilds the model the run trained; without a
    ``config.json`` (or with an empty ``checkpoint``), the flags alone.
    """
    if not checkpoint:
        return config_from_flags(flag_values)
    training.checkpoint_path(checkpoint)  # a wrong path fails here, naming it
    base = training.saved_config(training.run_directory(checkpoint))
    return config_from_flags(flag_values, base=base)


def point_at_calibrated_bone_lengths(checkpoint):
    """Prints where the run has bone lengths calibrated to it (tools/bone_lengths.py
    --checkpoint), for the tools that fit root depths without being given them."""
    calibrated = checkpoint and bone_lengths.calibrated_path(training.run_directory(checkpoint))
    if calibrated:
        print(f"note: {calibrated} holds bone lengths calibrated to this run; "
              f"--bone_lengths={calibrated} uses them")


def bone_lengths_for_checkpoint(config, checkpoint, path=""):
    """``(lengths, path)`` for the tools that bake a root-depth fit (export,
    predict): :func:`bone_lengths.for_run`, saying what it wrote and, unless
    ``path`` chose the file, where the run has calibrated lengths."""
    run_dir = training.run_directory(checkpoint) if checkpoint else None
    lengths, used, written = bone_lengths.for_run(config.train_pattern, run_dir, path,
                                                  skeleton.get_joint_set(config.joint_set))
    if written:
        print(f"wrote {used}")
    if not path:
        point_at_calibrated_bone_lengths(checkpoint)
    return lengths, used


class TerminalProgress:
    """Progress (step, loss, img/s, ETA) plus one line per event.

    On a terminal the progress is one live line, rewritten in place at most twice a
    second. Anywhere else (a log file, a pipe, a batch job's output) it is a plain line
    every ``log_every_s``: rewritten lines would pile up there as one endless line.
    """

    def __init__(self, stream=sys.stdout, log_every_s=30.0, clock=time.monotonic):
        self.stream = stream
        self.terminal = bool(getattr(stream, "isatty", lambda: False)())
        self.every = 0.5 if self.terminal else log_every_s
        self.clock = clock
        self.last = None
        self.live = False  # the last thing written is the live line, not ended

    def __call__(self, info):
        if "event" in info:  # on a terminal, its first newline ends the live line
            self.stream.write(("\n" if self.terminal else "") + self._event(info) + "\n")
            self.stream.flush()
            self.live = False
            return
        now = self.clock()
        if self.last is not None and now - self.last < self.every:
            return
        self.last = now
        eta = time.strftime("%H:%M:%S", time.gmtime(info["eta_sec"]))
        line = (f"step {info['step']:>7d}  loss {info['loss']:.6f}  "
                f"{info['images_per_sec']:6.1f} img/s  lr {info['learning_rate']:.2e}  "
                f"ETA {eta}")
        self.stream.write(f"\r{line}   " if self.terminal else line + "\n")
        self.stream.flush()
        self.live = self.terminal

    def end_line(self):
        """Ends the live line, so that what comes next (an error) starts a line."""
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
            self.live = False

    @staticmethod
    def _event(info):
        kind = info["event"]
        if kind == "validation":
            mm = info["mpjpe_mm"]
            mm = f"{mm:.1f} mm (ground-truth root depth)" if mm is not None else "n/a (no 3D)"
            return (f"validation at step {info['step']}: MPJPE {mm}, "
                    f"{info['mpjpe_voxels']:.2f} voxels over {info['examples']} examples")
        if kind == "init":
            return (f"init_checkpoint: restored {len(info['restored'])} weights, "
                    f"{len(info['not_found'])} not found: {info['not_found'][:10]}")
        if kind == "restored":
            return f"resumed from {info['checkpoint']} at step {info['step']}"
        if kind == "checkpoint":
            return f"saved checkpoint {info['path']}"
        if kind == "data":
            return info["message"]
        if kind == "interrupted":
            return f"interrupted by {info['signal']} at step {info['step']}; checkpoint saved"
        return str(info)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    progress = TerminalProgress()
    try:
        config = config_from_flags()
        if config.mixed_precision == "mixed_bfloat16" and hardware.bf16_is_emulated():
            print(f"note: {hardware.BF16_EMULATED_BECAUSE}: mixed_bfloat16 is emulated here "
                  "and trains at 0.14-0.4x fp32 (README).")
        result = training.train(config, dry_run=FLAGS.dry_run, progress=progress)
    except (ValueError, training.TrainingDivergedError) as e:
        hint = ""
        if "no files match" in str(e):
            hint = ("\nConvert the dataset first (tools/convert_h36m.py, convert_mpii.py, "
                    "convert_humaneva.py) or point --train_pattern at existing records.")
        raise SystemExit(f"error: {e}{hint}")
    finally:
        progress.end_line()
    if FLAGS.dry_run:
        print(result["summary"])
        print(f"parameters: {result['params']:,}")
        return
    val = [v for v in result["validation"] if v["mpjpe_mm"] is not None]
    if len(val) >= 2:
        print(f"validation MPJPE (ground-truth root depth): {val[0]['mpjpe_mm']:.1f} mm at step "
              f"{val[0]['step']} -> {val[-1]['mpjpe_mm']:.1f} mm at step {val[-1]['step']}")
    print(f"done at step {result['step']}; checkpoint {result['checkpoint']}")
    print(f"weights digest {training.weights_digest(result['model'])}")


if __name__ == "__main__":
    define_config_flags()
    _cli.run(main)
