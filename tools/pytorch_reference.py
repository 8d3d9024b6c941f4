"""The PyTorch reference of issue #3's speed aims, to measure on the machine at hand.

The aims of ``tools/benchmark.py --sections=model`` are ratios to "a PyTorch
implementation of the same network" (``hg``, depths 1,2,4,64, 17 joints, 256
features, 256x256 input, batch 4: 9.2 img/s inference and 1.85 img/s training
with dense targets on the machine the issue was written on). Speeds differ
several-fold between the machines this project runs on, so a ratio only means
something when both sides run on one machine: this script is that other side.

It builds Newell et al.'s stacked hourglass as their PyTorch ports do (every
convolution with a bias, pre-activation bottleneck residuals, next stack input
``x + conv1x1(features) + conv1x1(heatmaps)``): the weights of this
project's model with ``conv_bias=True``, layer for layer (13,231,415 at the
paper size; ``tests/test_benchmark.py`` checks it where PyTorch is installed).
It runs eagerly, as those ports do (no ``torch.compile``), and times

* inference: ``model.eval()`` under ``torch.inference_mode()``, in the default
  (NCHW) and the channels-last memory format; the faster one is the reference;
* training: one RMSprop step (lr 2.5e-4) on the mean squared error of every
  stack to dense target volumes handed in with the batch, as a PyTorch data
  loader would (the targets are made once, outside the timing); in both
  memory formats, the faster one is the reference.

PyTorch is not a dependency of tf_volpose; run it in its own environment::

    python -m venv /tmp/torch && /tmp/torch/bin/pip install torch absl-py
    /tmp/torch/bin/python tools/pytorch_reference.py [--batch_size=4] [--output_json=ref.json]

Prints one JSON object (img/s, parameters, threads, CPU model) and writes it with ``--output_json``.
"""

import json
import os
import statistics
import sys
import timeit

# no tools/_cli here: it loads TensorFlow and tf_volpose, which the PyTorch
# environment this runs in does not have (tests/test_benchmark.py checks the imports)
import torch
from absl import app, flags
from torch import nn

FLAGS = flags.FLAGS
flags.DEFINE_list("depths", ["1", "2", "4", "64"], "Depth resolution of each stack.")
flags.DEFINE_integer("joints", 17, "Joints.")
flags.DEFINE_integer("features", 256, "Hourglass width.")
flags.DEFINE_integer("input_size", 256, "Input crop side, px.")
flags.DEFINE_integer("hourglass_depth", 4, "Poolings per hourglass.")
flags.DEFINE_integer("batch_size", 4, "Batch size.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions (median).")
flags.DEFINE_integer("threads", 0, "torch.set_num_threads (0: PyTorch's default).")
flags.DEFINE_string("output_json", None, "Where to write the numbers.")


class Residual(nn.Module):
    """BN-ReLU-conv1x1(out/2), BN-ReLU-conv3x3(out/2), BN-ReLU-conv1x1(out) + skip."""

    def __init__(self, inputs, outputs):
        super().__init__()
        half = outputs // 2
        self.branch = nn.Sequential(
            nn.BatchNorm2d(inputs), nn.ReLU(), nn.Conv2d(inputs, half, 1),
            nn.BatchNorm2d(half), nn.ReLU(), nn.Conv2d(half, half, 3, padding=1),
            nn.BatchNorm2d(half), nn.ReLU(), nn.Conv2d(half, outputs, 1))
        self.skip = nn.Identity() if inputs == outputs else nn.Conv2d(inputs, outputs, 1)

    def forward(self, x):
        return self.branch(x) + self.skip(x)


class Hourglass(nn.Module):
    def __init__(self, depth, features):
        super().__init__()
        self.up = Residual(features, features)
        self.low1 = Residual(features, features)
        self.low2 = Hourglass(depth - 1, features) if depth > 1 else Residual(features, features)
        self.low3 = Residual(features, features)

    def forward(self, x):
        low = self.low3(self.low2(self.low1(nn.functional.max_pool2d(x, 2))))
        return self.up(x) + nn.functional.interpolate(low, scale_factor=2, mode="nearest")


class StackedHourglass(nn.Module):
    """``hg``: stem, then per stack hourglass, residual, lin, 1x1 head, fusion."""

    def __init__(self, head_channels, features=256, hourglass_depth=4):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, features // 4, 7, stride=2, padding=3), nn.BatchNorm2d(features // 4),
            nn.ReLU(), Residual(features // 4, features // 2), nn.MaxPool2d(2),
            Residual(features // 2, features // 2), Residual(features // 2, features))
        self.stacks = nn.ModuleList()
        self.heads = nn.ModuleList()
        self.fuse_features = nn.ModuleList()
        self.fuse_heatmaps = nn.ModuleList()
        for i, channels in enumerate(head_channels):
            self.stacks.append(nn.Sequential(
                Hourglass(hourglass_depth, features), Residual(features, features),
                nn.Conv2d(features, features, 1), nn.BatchNorm2d(features), nn.ReLU()))
            self.heads.append(nn.Conv2d(features, channels, 1))
            if i < len(head_channels) - 1:
                self.fuse_features.append(nn.Conv2d(features, features, 1))
                self.fuse_heatmaps.append(nn.Conv2d(channels, features, 1))

    def forward(self, x):
        x = self.stem(x)
        outputs = []
        for i, (stack, head) in enumerate(zip(self.stacks, self.heads)):
            lin = stack(x)
            heatmaps = head(lin)
            outputs.append(heatmaps)
            if i < len(self.fuse_features):
                x = x + self.fuse_features[i](lin) + self.fuse_heatmaps[i](heatmaps)
        return outputs


def weight_tensors(model):
    """Parameters and batch-norm moving statistics: what Keras's ``model.weights`` holds."""
    moving = [b for key, b in model.named_buffers() if key.endswith(("_mean", "_var"))]
    return list(model.parameters()) + moving


def count_weights(model):
    """What Keras's ``count_params`` counts."""
    return sum(w.numel() for w in weight_tensors(model))


def _median_seconds(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeats))


# the two memory formats PyTorch's CPU convolutions run in
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def cpu_model(cpuinfo_path="/proc/cpuinfo"):
    """The CPU's model name as Linux's cpuinfo gives it (None elsewhere): written with the
    speeds, so that tools/benchmark.py can refuse a reference measured on another machine.
    tf_volpose.hardware reads it the same way; this script cannot import it."""
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return None


def measure(depths, joints, features, input_size, batch_size, repeats, hourglass_depth=4):
    model = StackedHourglass([joints * d for d in depths], features, hourglass_depth)
    images = torch.rand(batch_size, 3, input_size, input_size)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model(),
              "backbone": "hg", "batch_size": batch_size, "depths": list(depths),
              "features": features, "joints": joints, "input_size": input_size,
              "hourglass_depth": hourglass_depth, "params": count_weights(model)}

    model.eval()
    for name, memory_format in LAYOUTS.items():
        model = model.to(memory_format=memory_format)
        batch = images.contiguous(memory_format=memory_format)

        def forward():
            with torch.inference_mode():
                model(batch)

        result[f"forward_img_per_s_{name}"] = batch_size / _median_seconds(forward, 2, repeats)
    result["forward_img_per_s"] = max(result[f"forward_img_per_s_{n}"] for n in LAYOUTS)

    size = input_size // 4
    for name, memory_format in LAYOUTS.items():
        model = model.to(memory_format=memory_format).train()
        batch = images.contiguous(memory_format=memory_format)
        targets = [torch.rand(batch_size, joints * d, size, size).contiguous(
            memory_format=memory_format) for d in depths]
        optimizer = torch.optim.RMSprop(model.parameters(), lr=2.5e-4)

        def train_step():
            optimizer.zero_grad(set_to_none=True)
            loss = sum(nn.functional.mse_loss(p, t) for p, t in zip(model(batch), targets))
            loss.backward()
            optimizer.step()

        result[f"train_img_per_s_{name}"] = batch_size / _median_seconds(train_step, 2, repeats)
    result["train_img_per_s"] = max(result[f"train_img_per_s_{n}"] for n in LAYOUTS)
    return result


def main(argv):
    del argv
    if FLAGS.threads:
        torch.set_num_threads(FLAGS.threads)
    try:
        depths = [int(d) for d in FLAGS.depths]
    except ValueError:
        depths = []
    if not depths or min(depths) < 1:
        raise ValueError(f"--depths takes comma-separated positive integers, got "
                         f"{','.join(FLAGS.depths)!r}")
    if FLAGS.output_json:  # checked now, not after minutes of measuring
        directory = os.path.dirname(os.path.abspath(FLAGS.output_json))
        if not os.path.isdir(directory):
            raise ValueError(f"--output_json {FLAGS.output_json}: no such directory {directory}")
    result = measure(depths, FLAGS.joints, FLAGS.features, FLAGS.input_size, FLAGS.batch_size,
                     FLAGS.repeats, FLAGS.hourglass_depth)
    text = json.dumps(result, indent=2)
    print(text)
    if FLAGS.output_json:
        with open(FLAGS.output_json, "w") as f:
            f.write(text + "\n")


def _main_reporting_bad_input(argv):
    try:
        return main(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # an --output_json that cannot be written: name it, no traceback
        print(f"error: {e.filename}: {e.strerror}" if e.filename else f"error: {e}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(_main_reporting_bad_input)
