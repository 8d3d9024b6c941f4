"""MPII Human Pose (2D only) -> records, from the stacked-hourglass annotation ``.h5``.

The ``.h5`` holds ``part`` (N, 16, 2) px, ``visible`` (N, 16), ``center`` (N, 2),
``scale`` (N,) (person height / 200 px), ``normalize`` (N,) and ``imgname`` (N,).
The record box follows the hourglass crop: centre moved down by ``15 * scale`` px
and side ``200 * 1.25 * scale``. MPII has no calibration: ``camera/f`` gives the
default field of view ``camera.DEFAULT_FOV_DEG`` and ``camera/c`` is the image centre.
"""

import collections
import os

import numpy as np
import tensorflow as tf

from tf_volpose import _files, camera
from tf_volpose.data import records
from tf_volpose.data.h36m import ConversionError, require_input

def convert(annotations, images_dir, output_dir, split="train", strict=False,
            examples_per_shard=1000, progress=None):
    """Writes ``<split>-*.tfrecord``; returns ``{"written": n, "skipped": {reason: n}}``."""
    import h5py
    require_input(annotations, "MPII annotations")
    require_input(images_dir, "images_dir", directory=True)
    try:
        with h5py.File(annotations, "r") as f:
            parts = np.asarray(f["part"], np.float64)
            visible = np.asarray(f["visible"], np.int64)
            centers = np.asarray(f["center"], np.float64)
            scales = np.asarray(f["scale"], np.float64)
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["imgname"][()]]
    except (OSError, KeyError) as e:
        raise ConversionError(f"cannot read MPII annotations {annotations}: "
                              f"{_files.error_reason(e)}") from e
    skipped = collections.Counter()
    written = 0
    with records.ShardedWriter(output_dir, split, examples_per_shard) as writer:
        for i, name in enumerate(names):
            path = os.path.join(images_dir, name)
            try:
                with open(path, "rb") as f:
                    data = f.read()
                height, width, _ = tf.io.extract_jpeg_shape(data).numpy()
            except OSError:
                if strict:
                    raise ConversionError(f"missing image {path}") from None
                skipped["missing image"] += 1
                continue
            except tf.errors.InvalidArgumentError:
                if strict:
                    raise ConversionError(f"corrupt image {path}") from None
                skipped["corrupt image"] += 1
                continue
            vis = visible[i] * np.all(parts[i] > 0, axis=-1)  # (0, 0) marks unannotated joints
            if scales[i] <= 0 or vis.sum() < 2:
                skipped["no usable annotation"] += 1
                continue
            center = centers[i] + [0.0, 15.0 * scales[i]]
            focal = camera.focal_from_fov(max(width, height))
            writer.write(records.make_example(
                data, int(height), int(width), np.where(vis[:, None] > 0, parts[i], 0.0), center,
                1.25 * scales[i], [focal, focal], [width / 2.0, height / 2.0], visible=vis,
                dataset="mpii", subject="", action="", camera="", frame=i))
            written += 1
            if progress:
                progress(i + 1, len(names))
    return {"written": written, "skipped": dict(skipped)}
