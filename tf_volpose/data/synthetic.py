"""The embedded synthetic dataset: rendered people with exact 3D ground truth.

Each sample is a 17-joint H36M skeleton, posed by a procedural sampler (joint
angle limits in ``resources/procedural_pose.json``) or taken from real motion
(``.npz`` of ``(frames, 17, 3)`` world mm, z up), seen by a pinhole camera
3-6 m away with the intrinsics of a real Human3.6M camera. Limbs are shaded
capsules whose width and brightness follow depth, drawn far to near, with
per-limb colours (left limbs warm, right limbs cool) over a textured random
background, so depth is learnable from the picture. The colours also tell left
from right, which a mirrored image would contradict: train on these records
without the flip augmentation (``flip_prob=0``, as ``configs/synthetic.cfg``)
and evaluate without the flip test.

Only a generous square window around the person is rendered
(``RENDER_SIZE`` px); the record's intrinsics and box are those of that
window (the schema allows a crop), so ``joints/2d`` is exactly the projection
of ``joints/3d`` with ``camera/f`` and ``camera/c``.
"""

import functools
import json
import multiprocessing
import os
import zlib
from importlib import resources

import cv2
import numpy as np

from tf_volpose import _files, camera, crop
from tf_volpose.data import records
from tf_volpose.data.mocap import load_motion

RENDER_SIZE = 384
MANIFEST_FILE = "synthetic.json"  # written last: what a complete set was rendered with
WINDOW_MARGIN = 1.6  # window side / box side: room for scale and rotation augmentation
MOTION_TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")

# (joint a, joint b, radius mm, colour BGR); left limbs warm, right limbs cool.
_LIMBS = (
    (0, 7, 120, (150, 150, 150)), (7, 8, 130, (170, 170, 170)),
    (0, 4, 90, (60, 90, 200)), (0, 1, 90, (200, 120, 60)),
    (4, 5, 75, (40, 60, 230)), (5, 6, 55, (30, 150, 250)),
    (1, 2, 75, (230, 90, 40)), (2, 3, 55, (200, 200, 40)),
    (8, 11, 60, (50, 80, 210)), (11, 12, 50, (20, 40, 250)), (12, 13, 40, (60, 200, 250)),
    (8, 14, 60, (210, 100, 50)), (14, 15, 50, (250, 60, 20)), (15, 16, 40, (160, 230, 60)),
    (8, 9, 45, (140, 170, 200)),
)
_HEAD = (9, 10, 105, (150, 190, 230))


@functools.lru_cache(maxsize=1)
def pose_prior():
    """The bundled bone lengths and joint-angle limits."""
    return json.loads(resources.files("tf_volpose").joinpath(
        "resources/procedural_pose.json").read_text())


def sample_procedural_pose(rng):
    """A random (17, 3) pose in a z-up body frame, mm, pelvis at the origin, facing +y.

    The subject's right is +x. Angles are uniform within the bundled limits.
    """
    prior = pose_prior()
    bone = {k: v * rng.uniform(*prior["body_scale"]) for k, v in prior["bone_lengths_mm"].items()}
    angle = {k: np.deg2rad(rng.uniform(*v)) for k, v in prior["angle_limits_deg"].items()}
    rot = camera.rotation_matrix
    X, Y, Z = np.eye(3)
    down, up = -Z, Z
    pose = np.zeros((17, 3))

    def leg(hip, knee, ankle, side):  # side +1 right (+x), -1 left
        pose[hip] = side * bone["hip"] * X
        a = {k: np.deg2rad(rng.uniform(*prior["angle_limits_deg"][k]))
             for k in ("hip_flexion", "hip_abduction", "knee_flexion")}
        thigh = rot(X, a["hip_flexion"]) @ rot(Y, -side * a["hip_abduction"])
        pose[knee] = pose[hip] + bone["thigh"] * thigh @ down
        shin = thigh @ rot(X, -a["knee_flexion"])
        pose[ankle] = pose[knee] + bone["shin"] * shin @ down

    leg(1, 2, 3, +1)
    leg(4, 5, 6, -1)
    torso = (rot(Z, angle["spine_twist"]) @ rot(Y, angle["spine_lateral"])
             @ rot(X, -angle["spine_flexion"]))
    pose[7] = bone["spine"] * torso @ up
    pose[8] = pose[7] + bone["chest"] * torso @ up
    neck = torso @ rot(Z, angle["neck_twist"]) @ rot(X, -angle["neck_flexion"])
    pose[9] = pose[8] + bone["neck"] * neck @ up
    pose[10] = pose[9] + bone["head"] * neck @ up

    def arm(shoulder, elbow, wrist, side):
        pose[shoulder] = pose[8] + side * bone["shoulder"] * torso @ X
        a = {k: np.deg2rad(rng.uniform(*prior["angle_limits_deg"][k]))
             for k in ("shoulder_flexion", "shoulder_abduction", "arm_twist", "elbow_flexion")}
        upper = torso @ rot(X, a["shoulder_flexion"]) @ rot(Y, -side * a["shoulder_abduction"])
        upper = upper @ rot(Z, a["arm_twist"])
        pose[elbow] = pose[shoulder] + bone["upper_arm"] * upper @ down
        fore = upper @ rot(X, a["elbow_flexion"])
        pose[wrist] = pose[elbow] + bone["forearm"] * fore @ down

    arm(14, 15, 16, +1)
    arm(11, 12, 13, -1)
    tilt = rot(X, angle["body_pitch"]) @ rot(Y, angle["body_roll"])
    return pose @ tilt.T


def random_camera(rng, target):
    """A camera 3-6 m from ``target`` (world mm, z up) with real H36M intrinsics.

    Returns ``(Camera, subject, camera_id)`` of the intrinsics used.
    """
    table = camera.h36m_camera_table()
    subject = rng.choice(sorted(k for k in table if not k.startswith("_")))
    camera_id = rng.choice(sorted(table[subject]))
    entry = table[subject][camera_id]
    distance = rng.uniform(3000.0, 6000.0)
    azimuth = rng.uniform(0.0, 2.0 * np.pi)
    height = rng.uniform(-400.0, 1200.0)  # camera height relative to the pelvis
    position = np.asarray(target) + [distance * np.cos(azimuth), distance * np.sin(azimuth), height]
    aim = np.asarray(target) + rng.normal(0.0, 150.0, 3)  # the person is not always centred
    R = camera.look_at_rotation(position, aim)
    return camera.Camera(R=R, T=position, f=entry["f"], c=entry["c"]), subject, camera_id


def _background(rng, size):
    base = rng.uniform(30, 220, 3)
    low = cv2.resize(rng.normal(0, 40, (4, 4, 3)).astype(np.float32), (size, size),
                     interpolation=cv2.INTER_CUBIC)
    mid = cv2.resize(rng.normal(0, 25, (16, 16, 3)).astype(np.float32), (size, size),
                     interpolation=cv2.INTER_LINEAR)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(8, 60)
    wave = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * (2 * np.pi / period))
    stripes = wave[..., None] * rng.uniform(0, 30, 3)
    image = base + low + mid + stripes
    for _ in range(rng.integers(0, 6)):  # distractor blobs
        center = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(5, size // 4, 2))
        cv2.ellipse(image, center, axes, float(rng.uniform(0, 180)), 0, 360,
                    tuple(float(v) for v in rng.uniform(0, 255, 3)), -1, cv2.LINE_AA)
    return image


def render_person(pose_cam, K, image, rng):
    """Draws shaded capsules onto ``image`` (float32 BGR, modified in place), far to near."""
    uv = camera.project_pinhole(pose_cam, K)
    focal = K[0, 0]
    parts = [(a, b, r, c) for a, b, r, c in _LIMBS] + [_HEAD]
    parts.sort(key=lambda p: -(pose_cam[p[0], 2] + pose_cam[p[1], 2]))
    jitter = rng.uniform(0.85, 1.15, 3)
    for a, b, radius, colour in parts:
        depth = 0.5 * (pose_cam[a, 2] + pose_cam[b, 2])
        if (a, b) == _HEAD[:2]:
            p = q = 0.5 * (uv[a] + uv[b])
        else:
            p, q = uv[a], uv[b]
        r_px = max(focal * radius / depth, 1.0)
        shade = np.clip(4500.0 / depth, 0.55, 1.35)  # nearer is brighter
        base = np.clip(np.asarray(colour) * jitter * shade, 0, 255)
        # three passes (rim, body, highlight) give a cylinder-like shading
        for width, gain in ((1.0, 0.6), (0.7, 1.0), (0.3, 1.35)):
            thickness = max(int(round(2 * r_px * width)), 1)
            col = tuple(float(v) for v in np.clip(base * gain, 0, 255))
            pt1 = tuple(int(round(v * 16)) for v in p)
            pt2 = tuple(int(round(v * 16)) for v in q)
            cv2.line(image, pt1, pt2, col, thickness, cv2.LINE_AA, shift=4)
    return uv


def render_sample(pose_world, rng, render_size=RENDER_SIZE, jpeg_quality=90):
    """Renders one sample; returns the record fields as a dict."""
    cam, subject, camera_id = random_camera(rng, pose_world[0])
    pose_cam = cam.world_to_camera(pose_world)
    uv_full = camera.project_pinhole(pose_cam, cam.K)
    center, scale = crop.box_from_joints(uv_full)
    window = WINDOW_MARGIN * crop.BOX_SIZE_PX * scale
    zoom = render_size / window
    origin = center - window / 2.0
    f, c = camera.window_intrinsics(cam.f, cam.c, origin, zoom)
    K = camera.intrinsics_matrix(f, c)
    image = _background(rng, render_size)
    joints_2d = render_person(pose_cam, K, image, rng)
    image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return dict(image_encoded=jpeg.tobytes(), height=render_size, width=render_size,
                joints_2d=joints_2d, joints_3d=pose_cam, center=(center - origin) * zoom,
                scale=scale * zoom, f=f, c=c, camera=f"{subject}/{camera_id}")


def _sample_seed(seed, split, index):
    return [int(seed), zlib.crc32(split.encode()), int(index)]


def _render_one(args):
    seed, split, index, pose_world, subject, action, frame = args
    rng = np.random.default_rng(_sample_seed(seed, split, index))
    if pose_world is None:
        pose_world = sample_procedural_pose(rng)
        # a random heading and a pelvis height so the feet are near the floor
        pose_world = pose_world @ camera.rotation_matrix([0, 0, 1], rng.uniform(0, 2 * np.pi)).T
        pose_world = pose_world + [0.0, 0.0, 50.0 - pose_world[:, 2].min()]
    fields = render_sample(np.asarray(pose_world, np.float64), rng)
    example = records.make_example(dataset="synthetic", subject=subject, action=action,
                                   frame=frame, **fields)
    return example.SerializeToString(deterministic=True)


def _motion_tasks(motion, split, count, seed):
    """Frames of the split's subjects, evenly spread over the sequences."""
    keys = sorted(k for k in motion
                  if (k.split("/")[0] in MOTION_TRAIN_SUBJECTS) == (split == "train"))
    if not keys:
        keys = sorted(motion)  # a motion file without H36M subject names: split by frame parity
    frames = [(k, i) for k in keys for i in range(len(motion[k]))]
    if not any("/" in k and k.split("/")[0].startswith("S") for k in keys):
        frames = frames[split != "train"::2]
    rng = np.random.default_rng([int(seed), zlib.crc32(split.encode()), 7])
    chosen = rng.choice(len(frames), size=count, replace=count > len(frames))
    for index, pick in enumerate(chosen):
        key, frame = frames[pick]
        subject, _, action = key.partition("/")
        yield (seed, split, index, motion[key][frame], subject, action or key, frame)


def generate(output_dir, num_train, num_val, seed=0, motion=None, examples_per_shard=500,
             workers=None, progress=None):
    """Writes ``train-*.tfrecord`` and ``val-*.tfrecord`` synthetic records.

    Args:
      output_dir: destination directory.
      num_train, num_val: number of records per split.
      seed: the same seed gives byte-identical records.
      motion: optional path to an ``.npz`` of real motion; train/val split by
        subject (S1, S5-S8 train; others val). Default: procedural poses, the
        two splits drawn from independent random streams.
      workers: rendering processes (default: all cores).
      progress: optional callable ``(split, done, total)``.

    Returns:
      dict split -> number of records written.

    ``synthetic.json`` (:data:`MANIFEST_FILE`) is written last, saying what the
    set was rendered with; a rendering that stops midway leaves none (an older
    one is removed first), so :func:`rendered_set` tells a complete set from
    the shards an interrupted run left.
    """
    for name, value, least in (("num_train", num_train, 0), ("num_val", num_val, 0),
                               ("examples_per_shard", examples_per_shard, 1)):
        if int(value) != value or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    motion_data = load_motion(motion) if motion else None
    manifest = os.path.join(output_dir, MANIFEST_FILE)
    if os.path.exists(manifest):
        os.remove(manifest)
    workers = workers or multiprocessing.cpu_count()
    counts = {}
    for split, count in (("train", num_train), ("val", num_val)):
        if motion_data is not None:
            tasks = list(_motion_tasks(motion_data, split, count, seed))
        else:
            tasks = [(seed, split, i, None, "procedural", "procedural", i) for i in range(count)]
        with records.ShardedWriter(output_dir, split, examples_per_shard) as writer:
            if workers > 1 and count > 1:
                with multiprocessing.get_context("spawn").Pool(workers) as pool:
                    for n, data in enumerate(pool.imap(_render_one, tasks, chunksize=8), 1):
                        writer.write(data)
                        if progress:
                            progress(split, n, count)
            else:
                for n, task in enumerate(tasks, 1):
                    writer.write(_render_one(task))
                    if progress:
                        progress(split, n, count)
        counts[split] = writer.count
    _files.write_text_atomically(manifest, json.dumps(
        _manifest(num_train, num_val, seed, motion, examples_per_shard), indent=1))
    return counts


def _manifest(num_train, num_val, seed, motion, examples_per_shard):
    return {"num_train": int(num_train), "num_val": int(num_val), "seed": int(seed),
            "motion": os.path.abspath(motion) if motion else None,
            "examples_per_shard": int(examples_per_shard)}


def rendered_set(output_dir):
    """What the complete synthetic set in ``output_dir`` was rendered with (the
    :func:`generate` arguments ``num_train``, ``num_val``, ``seed``, ``motion``,
    ``examples_per_shard``), or ``None`` when there is none: nothing rendered, or a
    rendering that did not finish."""
    try:
        with open(os.path.join(output_dir, MANIFEST_FILE)) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
