"""Speed measurements behind ``tools/benchmark.py`` (each returns a JSON-ready dict).

* :func:`model_speed`: forward and training img/s, GFLOPs per image counted
  from the graph; :func:`matmul_rates` for the measured matmul peak and the
  roofline fraction;
  :func:`reference_ratios` relates them to ``tools/pytorch_reference.py``'s
  numbers for the same network on the same machine;
* :func:`loss_speed`: separable vs dense volumetric loss (with and without the
  last head), time and memory;
* :func:`decode_speed`: heatmaps -> sub-voxel joints, per decoding method;
* :func:`pipeline_speed`: the training input pipeline on records of large JPEG frames;
* :func:`serving_speed`: gRPC latency vs the in-process forward pass, and
  throughput with concurrent clients;
* :func:`format_section`: one section's numbers as a readable table.
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time

import cv2
import keras
import numpy as np
import tensorflow as tf

from tf_volpose import _files, crop, hardware, losses, metrics, training, volume
from tf_volpose.data import pipeline, records, synthetic


def _time(fn, warmup=2, repeats=5, statistic=np.median):
    """Seconds one call of ``fn`` takes: ``statistic`` of ``repeats`` timed calls after
    ``warmup`` untimed ones (the median by default; ``min`` for a peak)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(statistic(times))


# (m, k, n) of the products timed for the matmul peak: a square one, and two of this
# network's own at the paper size, batch 4: a 1x1 convolution at 64x64 (B*64*64 rows, 256
# features in and out) and a 3x3 one at 32x32 as im2col would multiply it (9*256 inner)
PEAK_SHAPES = ((2048, 2048, 2048), (16384, 256, 256), (4096, 2304, 256))


def matmul_rates(dtype="float32", shapes=PEAK_SHAPES, repeats=5):
    """GFLOP/s (``2 m k n`` flops per product, best of ``repeats``) of an ``(m, k) x (k, n)``
    matmul of each shape: TensorFlow's (oneDNN) in ``dtype`` and, for float32, NumPy's BLAS.

    The best of them is the machine's measured matmul peak, which the benchmark's roofline
    fraction divides by. One square TensorFlow product alone is not it: on a 2-core AVX2
    host (2026-12-03) a 2048^3 one ran 75-106 GFLOP/s, NumPy's BLAS the same product 129-146
    and TensorFlow this network's 1x1-convolution product 123-136, so the model's
    convolutions ran "128%" of that peak.

    Returns:
      ``{"tf_MxKxN": rate, ..., "numpy_MxKxN": rate, ...}``.
    """
    rates = {}
    for m, k, n in shapes:
        a = tf.cast(tf.random.uniform([m, k]), dtype)
        b = tf.cast(tf.random.uniform([k, n]), dtype)
        product = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
        seconds = _time(lambda: product().numpy(), repeats=repeats, statistic=min)
        rates[f"tf_{m}x{k}x{n}"] = 2 * m * k * n / seconds / 1e9
        if dtype == "float32":
            a_np, b_np = a.numpy(), b.numpy()
            seconds = _time(lambda: a_np @ b_np, repeats=repeats, statistic=min)
            rates[f"numpy_{m}x{k}x{n}"] = 2 * m * k * n / seconds / 1e9
    return rates


def graph_gflops(model, input_size):
    """Floating-point operations of one forward pass per image, from the graph (GFLOPs)."""
    from tensorflow.python.framework.convert_to_constants import \
        convert_variables_to_constants_v2_as_graph
    from tensorflow.python.util import deprecation
    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, input_size, input_size, 3], tf.float32))
    _, graph_def = convert_variables_to_constants_v2_as_graph(concrete)
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name="")
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        # the profiler's own convolution counter calls a deprecated TF1 helper, whose
        # warning (twice, through TF's and absl's loggers) says nothing to a user
        with deprecation.silence():
            profile = tf.compat.v1.profiler.profile(graph, options=options)
    return profile.total_float_ops / 1e9


def model_speed(config, batch_size=4, precision="fp32", repeats=5):
    """Forward and training throughput of ``config``'s model at ``batch_size``."""
    previous = keras.mixed_precision.global_policy().name
    if precision == "bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = training.build_model(config)
        optimizer = keras.optimizers.RMSprop(config.learning_rate)
        images = tf.random.uniform([batch_size, config.input_size, config.input_size, 3])
        targets = {"joints_voxel": tf.random.uniform([batch_size, config.num_joints, 3]) *
                   tf.constant([config.xy_res, config.xy_res, config.fine_depth], tf.float32),
                   "mask": tf.ones([batch_size, config.num_joints])}

        @tf.function
        def forward():
            return model(images, training=False)

        training_forward = training.TrainingForward(config, model)

        @tf.function
        def train_step():
            with tf.GradientTape() as tape:
                outputs = training_forward(images)
                loss = tf.reduce_mean(training.compute_loss(config, outputs, targets)[0])
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        forward_s = _time(lambda: tf.nest.map_structure(lambda t: t.numpy(), forward()),
                          repeats=repeats)
        train_s = _time(lambda: train_step().numpy(), repeats=repeats)
        result = {"precision": precision, "batch_size": batch_size, "params": model.count_params(),
                  "forward_img_per_s": batch_size / forward_s,
                  "train_img_per_s": batch_size / train_s}
        if precision == "fp32":
            result["gflops_per_image"] = graph_gflops(model, config.input_size)
        return result
    finally:
        keras.mixed_precision.set_global_policy(previous)


def load_reference(path, config, batch_size, cpu=None):
    """Reads ``tools/pytorch_reference.py``'s JSON and checks it measured this network, here.

    Args:
      cpu: this machine's CPU model (default: ``hardware.describe_host()``'s).

    Raises:
      ValueError: the file is missing or not such JSON, or it measured another
        backbone, depths, features, joints, input size, hourglass depth or batch
        size than ``config`` / ``batch_size`` (naming the file, the field and both
        values; files written before the script recorded its hourglass depth
        measured 4, the only one it built then), or
        on another CPU model (a ratio across machines says nothing about the code;
        files written before the script recorded its CPU are taken as they are).
    """
    try:
        with open(path) as f:
            reference = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the PyTorch reference {path}: "
                         f"{_files.error_reason(e)}") from None
    missing = [k for k in ("forward_img_per_s", "train_img_per_s")
               if not isinstance(reference, dict) or k not in reference]
    if missing:
        raise ValueError(f"{path} has no {missing[0]!r}: not a JSON written by "
                         f"tools/pytorch_reference.py --output_json")
    ours = {"backbone": config.backbone, "depths": list(config.depths),
            "features": config.features, "joints": config.num_joints,
            "input_size": config.input_size, "hourglass_depth": config.hourglass_depth,
            "batch_size": batch_size}
    measured = dict({"hourglass_depth": 4}, **reference)
    for field, value in ours.items():
        if measured.get(field) != value:
            raise ValueError(f"{path} measured {field}={measured.get(field)!r}, the benchmarked "
                             f"model has {field}={value!r}: measure both with the same network "
                             f"and batch size")
    if reference.get("cpu") is not None:  # files from before the script recorded it: as they are
        cpu = cpu or hardware.describe_host()["cpu"]
        if reference["cpu"] != cpu:
            raise ValueError(f"{path} was measured on another CPU ({reference['cpu']!r}; this "
                             f"machine's: {cpu!r}): a speed ratio means something only on "
                             f"one machine; run tools/pytorch_reference.py here")
    return reference


def reference_ratios(fp32, reference):
    """This project's fp32 speeds over a PyTorch reference's (``tools/pytorch_reference.py``).

    Args:
      fp32: :func:`model_speed`'s fp32 numbers.
      reference: from :func:`load_reference`: img/s overall and per memory format.

    Returns:
      ``{"forward": ..., "train": ...}`` over the reference's faster memory
      format, and ``"<forward|train>_vs_<format>"`` over each format it timed.
    """
    ratios = {}
    for what in ("forward", "train"):
        ours = fp32[f"{what}_img_per_s"]
        ratios[what] = ours / reference[f"{what}_img_per_s"]
        prefix = f"{what}_img_per_s_"
        for key, value in reference.items():
            if key.startswith(prefix):
                ratios[f"{what}_vs_{key[len(prefix):]}"] = ours / value
    return ratios


def loss_speed(batch_size=4, joints=17, size=64, depth=64, features=256, repeats=5):
    """Volumetric loss with gradients at one stack of ``depth``: separable vs dense.

    ``*_ms`` time the loss of given heatmaps; ``head_*_ms`` the last stack's
    1x1 head (``features`` -> ``joints*depth`` channels) and its loss together,
    gradients for the features and the head's weights included, as a training
    step runs them: dense target, separable loss, and the loss taken before the
    head (:func:`losses.head_volumetric_loss_per_example`, what training does).
    """
    heatmaps = tf.random.normal([batch_size, size, size, joints * depth], stddev=0.1)
    voxels = tf.random.uniform([batch_size, joints, 3]) * tf.constant([size, size, depth], tf.float32)
    head_input = tf.random.normal([batch_size, size, size, features])
    kernel = tf.random.normal([1, 1, features, joints * depth], stddev=features ** -0.5)
    bias = tf.zeros([joints * depth])

    def timed(loss_fn, sources):
        @tf.function
        def run():
            with tf.GradientTape() as tape:
                tape.watch(sources)
                loss = tf.reduce_mean(loss_fn())
            return loss, tape.gradient(loss, sources)
        return 1e3 * _time(lambda: run()[0].numpy(), repeats=repeats)

    def head():
        return tf.nn.bias_add(tf.nn.conv2d(head_input, kernel, 1, "VALID"), bias)

    head_sources = [head_input, kernel, bias]
    volume_bytes = batch_size * size * size * joints * depth * 4
    return {"batch_size": batch_size, "joints": joints, "size": size, "depth": depth,
            "features": features,
            "separable_ms": timed(lambda: losses.volumetric_loss(heatmaps, voxels, depth),
                                  [heatmaps]),
            "dense_ms": timed(lambda: losses.dense_volumetric_loss(heatmaps, voxels, depth),
                              [heatmaps]),
            "head_dense_ms": timed(lambda: losses.dense_volumetric_loss(head(), voxels, depth),
                                   head_sources),
            "head_separable_ms": timed(lambda: losses.volumetric_loss(head(), voxels, depth),
                                       head_sources),
            "head_fused_ms": timed(lambda: losses.head_volumetric_loss_per_example(
                head_input, kernel, bias, voxels, depth), head_sources),
            # what crosses the input pipeline per batch: coordinates vs dense target volumes
            "separable_target_bytes": batch_size * joints * 3 * 4,
            "dense_target_bytes": volume_bytes}


def decode_speed(batch_size=8, joints=17, size=64, depth=64, repeats=5):
    """Milliseconds per batch of ``volume.decode_heatmaps_tf``, per method, at one stack."""
    heatmaps = tf.random.uniform([batch_size, size, size, joints * depth])
    result = {"batch_size": batch_size, "joints": joints, "size": size, "depth": depth}
    for method in volume.DECODE_METHODS:
        decode = tf.function(lambda m=method: volume.decode_heatmaps_tf(heatmaps, joints, depth, m))
        result[f"{method}_ms"] = 1e3 * _time(lambda: decode()[0].numpy(), repeats=repeats)
    return result


def write_large_frame_records(directory, count=64, size=1000, seed=0):
    """Records of ``size`` x ``size`` JPEG frames (synthetic people pasted on large frames)."""
    rng = np.random.default_rng(seed)
    with records.ShardedWriter(directory, "bench", examples_per_shard=count) as writer:
        for i in range(count):
            fields = synthetic.render_sample(synthetic.sample_procedural_pose(rng) + [0, 0, 900],
                                             rng, render_size=384)
            frame = np.clip(rng.normal(120, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            person = cv2.imdecode(np.frombuffer(fields["image_encoded"], np.uint8), cv2.IMREAD_COLOR)
            offset = rng.integers(0, size - 384, 2)
            frame[offset[1]:offset[1] + 384, offset[0]:offset[0] + 384] = person
            shift = offset.astype(np.float64)
            example = records.make_example(
                cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(), size, size,
                fields["joints_2d"] + shift, fields["center"] + shift, fields["scale"],
                fields["f"], fields["c"] + shift, fields["joints_3d"], dataset="bench")
            writer.write(example)
    return os.path.join(directory, "bench-*")


def pipeline_speed(file_pattern, batch_size=4, input_size=256, batches=100):
    """Training pipeline (full augmentation) batches of ``batch_size`` per second -> img/s."""
    ds = pipeline.make_dataset(file_pattern, training=True, batch_size=batch_size,
                               input_size=input_size, xy_res=input_size // 4)
    iterator = iter(ds)
    for _ in range(10):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return {"batch_size": batch_size, "input_size": input_size,
            "img_per_s": batches * batch_size / (time.perf_counter() - start)}


def serving_speed(export_dir, image_bytes, box, requests=50, clients=4, port=None):
    """p50/p99 latency of one image through gRPC (``serving/server.py``) vs in process."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "serving"))
    import client as serving_client  # noqa: E402  (serving/ holds scripts)
    loaded = tf.saved_model.load(export_dir)
    fn = loaded.signatures["serving_default"]
    inputs = dict(image_bytes=tf.constant([image_bytes]), box=tf.constant([box], tf.float32))
    for _ in range(3):
        fn(**inputs)
    local = []
    for _ in range(requests):
        start = time.perf_counter()
        fn(**inputs)["joints_3d_mm"].numpy()
        local.append(time.perf_counter() - start)
    del loaded, fn
    import socket
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    base = os.path.dirname(export_dir)
    server = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.dirname(
        __file__)), "serving", "server.py"), f"--model_base_path={base}", f"--port={port}",
        f"--max_concurrent={clients}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    try:
        client = serving_client.GrpcClient(f"127.0.0.1:{port}", retries=10, timeout=120)
        client.wait_until_available(120, process=server)
        for _ in range(3):
            client.predict(image_bytes, box)
        remote = []
        for _ in range(requests):
            start = time.perf_counter()
            client.predict(image_bytes, box)
            remote.append(time.perf_counter() - start)

        def one(_):
            client.predict(image_bytes, box)

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(requests)))
        throughput = requests / (time.perf_counter() - start)
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    p = lambda xs, q: 1e3 * float(np.percentile(xs, q))
    return {"in_process_p50_ms": p(local, 50), "in_process_p99_ms": p(local, 99),
            "grpc_p50_ms": p(remote, 50), "grpc_p99_ms": p(remote, 99),
            "grpc_overhead_p50": p(remote, 50) / p(local, 50) - 1.0,
            "concurrent_clients": clients, "concurrent_img_per_s": throughput}


def _record_requests(file_pattern, max_images):
    """Requests from records, for serving benchmarks.

    Returns ``(image_bytes (N,), box (N, 4) x, y, w, h, joints_3d)``, the last
    ``(N, J, 3)`` camera-frame mm, or ``None`` unless every record has them.
    """
    images, boxes, joints = [], [], []
    for raw in tf.data.TFRecordDataset(pipeline.record_files(file_pattern)).take(max_images):
        ex = records.parse_example(raw)
        images.append(ex["image/encoded"].numpy())
        boxes.append(crop.xywh_from_box(ex["box/center"].numpy(), float(ex["box/scale"].numpy())))
        joints.append(ex["joints/3d"].numpy())
    has_3d = all(len(j) for j in joints)
    return images, np.asarray(boxes, np.float32), np.stack(joints) if has_3d else None


def format_section(name, section):
    """``section`` (a dict of numbers, nested dicts and lists) as a table headed ``name``:
    one ``key  value`` row per number, nested keys joined with dots, floats to 4
    significant digits (the JSON keeps them all)."""
    rows = []

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, float):
            rows.append((prefix, f"{value:.4g}"))
        else:
            rows.append((prefix, json.dumps(value)))

    walk("", section)
    width = max((len(key) for key, _ in rows), default=0)
    return "\n".join([f"== {name}"] + [f"  {key:<{width}}  {value}" for key, value in rows])


def _spread(values):
    """Mean, median, 95th percentile and maximum of an array, as floats."""
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "p95": float(np.percentile(values, 95)), "max": float(values.max())}


def export_precision_speed(model, config, bone_lengths, file_pattern, batch_size=8,
                           max_images=200, repeats=3):
    """fp32 vs bf16 SavedModel exports of ``model`` on real requests from records.

    Both exports are written to a temporary directory (``<precision>_export_s``:
    the seconds each took) and called through ``serving_default`` (decode,
    crop, network, decoding, lifting), in batches of ``batch_size`` over up to
    ``max_images`` records. Returns throughput
    (best of ``repeats`` passes), the distance between the two exports'
    ``joints_3d_mm`` (mm; absolute and root-relative, per joint) and, where
    the records have 3D ground truth, each export's root-relative MPJPE.
    The millimetre distances have two sources, reported apart: the decoded
    voxels (``joints_voxel``, voxels; in mm as ``joint_diff_same_root_depth_mm``,
    the bf16 joints moved to the fp32 root depth) and the root depth
    (``root_depth_mm``, mm), which rests on all joints' bone lengths and
    rescales every joint.
    """
    from tf_volpose import export, skeleton
    images, boxes, truth = _record_requests(file_pattern, max_images)
    root = skeleton.get_joint_set(config.joint_set).root
    batches = [(tf.constant(images[i:i + batch_size]), tf.constant(boxes[i:i + batch_size]))
               for i in range(0, len(images), batch_size)]
    result = {"images": len(images), "batch_size": batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        functions = {}
        for precision in export.PRECISIONS:
            start = time.perf_counter()
            path = export.export_saved_model(model, config, os.path.join(tmp, precision),
                                             bone_lengths, precision=precision)
            result[f"{precision}_export_s"] = time.perf_counter() - start
            functions[precision] = tf.saved_model.load(path).signatures["serving_default"]
            functions[precision](image_bytes=batches[0][0], box=batches[0][1])  # warm up
        best, outputs = {p: float("inf") for p in functions}, {}
        for _ in range(repeats):  # alternate, so that machine noise hits both alike
            for precision, fn in functions.items():
                start = time.perf_counter()
                out = [fn(image_bytes=im, box=bx) for im, bx in batches]
                best[precision] = min(best[precision], time.perf_counter() - start)
                outputs[precision] = {k: np.concatenate([o[k].numpy() for o in out])
                                      for k in ("joints_3d_mm", "joints_voxel", "root_depth_mm")}
    for precision, seconds in best.items():
        result[f"{precision}_img_per_s"] = len(images) / seconds
    result["bf16_speedup"] = result["bf16_img_per_s"] / result["fp32_img_per_s"]
    joints = {p: o["joints_3d_mm"] for p, o in outputs.items()}
    low, high = outputs["bf16"], outputs["fp32"]
    absolute = np.linalg.norm(joints["bf16"] - joints["fp32"], axis=-1)
    relative = metrics.joint_errors(joints["bf16"], joints["fp32"], root)
    # the network and decoding alone: bf16's joints slid to fp32's root depth
    same_root = metrics.joint_errors(
        volume.move_root_depth(joints["bf16"], low["root_depth_mm"], high["root_depth_mm"]),
        joints["fp32"], root)
    for name, d in (("abs", absolute), ("root_relative", relative),
                    ("same_root_depth", same_root)):
        result[f"joint_diff_{name}_mm"] = dict(_spread(d), within_1mm=float((d <= 1.0).mean()))
    result["joint_diff_voxels"] = _spread(
        np.linalg.norm(low["joints_voxel"] - high["joints_voxel"], axis=-1))
    result["root_depth_diff_mm"] = _spread(np.abs(low["root_depth_mm"] - high["root_depth_mm"]))
    if truth is not None:
        result["mpjpe_root_relative_mm"] = {
            p: float(metrics.mpjpe(joints[p], truth, root).mean()) for p in joints}
    return result
