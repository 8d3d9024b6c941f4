"""Cameras: world <-> camera frames, projection with Human3.6M distortion.

Conventions (DESIGN.md section 2): millimetres; camera frame x right, y down,
z forward; ``X_cam = R @ (X_world - T)`` with ``T`` the camera centre in world
coordinates; image u right, v down, in pixels.
"""

import functools
import json
import math
from importlib import resources

import numpy as np
import tensorflow as tf

from tf_volpose import _checks


def intrinsics_matrix(f, c):
    """3x3 pinhole matrix ``K`` from focal lengths ``f=(fx, fy)`` and principal point ``c=(cx, cy)`` (px)."""
    f = _checks.positive("f", _checks.as_array("f", f, shape=(2,)))
    c = _checks.as_array("c", c, shape=(2,))
    return np.array([[f[0], 0.0, c[0]], [0.0, f[1], c[1]], [0.0, 0.0, 1.0]])


DEFAULT_FOV_DEG = 50.0  # field of view assumed for images without calibration


def focal_from_fov(image_side_px, fov_deg=DEFAULT_FOV_DEG):
    """Focal length (px) giving ``fov_deg`` across ``image_side_px`` (NumPy or TF values)."""
    return image_side_px / (2.0 * math.tan(math.radians(fov_deg) / 2.0))


def focal_lengths(values):
    """``(fx, fy)`` px as given (e.g. on a command line) -> two floats.

    Raises:
      ValueError: not two finite positive numbers.
    """
    focal = _checks.as_array("focal (fx,fy)", values, shape=(2,))
    _checks.positive("focal (fx,fy)", focal)
    return focal.tolist()


def intrinsics_matrix_tf(focal, principal):
    """Batched TF ``K``: ``(B, 2)`` focal lengths and principal points -> ``(B, 3, 3)``."""
    focal = tf.cast(focal, tf.float32)
    principal = tf.cast(principal, tf.float32)
    zeros = tf.zeros_like(focal[:, 0])
    return tf.stack([tf.stack([focal[:, 0], zeros, principal[:, 0]], -1),
                     tf.stack([zeros, focal[:, 1], principal[:, 1]], -1),
                     tf.stack([zeros, zeros, tf.ones_like(zeros)], -1)], axis=1)


def window_intrinsics(f, c, origin, zoom):
    """Intrinsics of an image window starting at ``origin`` (px) and resized by ``zoom``.

    Returns ``(f', c')``: focal lengths scale, the principal point shifts then scales.
    """
    return np.asarray(f, np.float64) * zoom, (np.asarray(c, np.float64) - origin) * zoom


def project_pinhole(points_cam, K):
    """Pinhole projection of ``(..., 3)`` camera-frame mm to ``(..., 2)`` px."""
    points_cam = np.asarray(points_cam, dtype=np.float64)
    xy = points_cam[..., :2] / points_cam[..., 2:3]
    return xy * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])


def backproject_pinhole(uv, depth, K):
    """Inverse of :func:`project_pinhole`: ``(..., 2)`` px and ``(...)`` depth mm -> ``(..., 3)`` mm."""
    uv = np.asarray(uv, dtype=np.float64)
    depth = np.asarray(depth, dtype=np.float64)[..., None]
    xy = (uv - np.array([K[0, 2], K[1, 2]])) / np.array([K[0, 0], K[1, 1]])
    return np.concatenate([xy * depth, depth], axis=-1)


def rotation_matrix(axis, angle_rad):
    """3x3 rotation by ``angle_rad`` about ``axis`` (right-hand rule, Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    x, y, z = axis
    skew = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle_rad) * skew + (1.0 - np.cos(angle_rad)) * skew @ skew


def look_at_rotation(position, target, up=(0.0, 0.0, 1.0)):
    """World-to-camera ``R`` of a camera at ``position`` looking at ``target``.

    Camera axes: x right, y down, z forward; ``up`` is the world's up direction.
    """
    forward = np.asarray(target, np.float64) - np.asarray(position, np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


class Camera:
    """A calibrated camera.

    Args:
      R: (3, 3) world-to-camera rotation.
      T: (3,) camera centre in world coordinates, mm.
      f: (2,) focal lengths ``(fx, fy)``, px.
      c: (2,) principal point ``(cx, cy)``, px.
      k: (3,) radial distortion ``k1, k2, k3``; ``None`` for none.
      p: (2,) tangential distortion ``p1, p2`` (Human3.6M model, no factor 2);
        ``None`` for none.

    Example:
      >>> cam = Camera.from_h36m("S9", "54138969")
      >>> uv = cam.project(cam.world_to_camera(points_world))  # (N, 2) px
    """

    def __init__(self, R, T, f, c, k=None, p=None):
        self.R = _checks.as_array("R", R, shape=(3, 3))
        if not np.allclose(self.R @ self.R.T, np.eye(3), atol=1e-6):
            raise ValueError(f"R must be a rotation matrix, got {self.R.tolist()}")
        self.T = _checks.as_array("T", T, shape=(3,))
        self.f = _checks.as_array("f", f, shape=(2,))
        _checks.positive("f", self.f)
        self.c = _checks.as_array("c", c, shape=(2,))
        self.k = _checks.as_array("k", np.zeros(3) if k is None else k, shape=(3,))
        self.p = _checks.as_array("p", np.zeros(2) if p is None else p, shape=(2,))

    @property
    def K(self):
        """3x3 pinhole intrinsics matrix."""
        return intrinsics_matrix(self.f, self.c)

    def world_to_camera(self, points_world):
        """``(N, 3)`` world mm -> ``(N, 3)`` camera mm."""
        X = _checks.as_array("points_world", points_world, shape=(..., 3))
        return (X - self.T) @ self.R.T

    def camera_to_world(self, points_cam):
        """``(N, 3)`` camera mm -> ``(N, 3)`` world mm."""
        X = _checks.as_array("points_cam", points_cam, shape=(..., 3))
        return X @ self.R + self.T

    def project(self, points_cam):
        """``(N, 3)`` camera mm -> ``(N, 2)`` px with the Human3.6M distortion model.

        With ``x = X/Z``, ``y = Y/Z``, ``r2 = x^2 + y^2``:
        ``xd = x*radial + p1*x*y + p2*(r2 + x^2)``,
        ``yd = y*radial + p1*(r2 + y^2) + p2*x*y``,
        ``radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3``. This reproduces the
        dataset's own 2D annotations (it is not OpenCV's model).
        """
        X = _checks.as_array("points_cam", points_cam, shape=(..., 3))
        if np.any(X[..., 2] <= 0):
            raise ValueError(f"points_cam must lie in front of the camera (Z > 0), "
                             f"got min Z = {X[..., 2].min()}")
        x = X[..., 0] / X[..., 2]
        y = X[..., 1] / X[..., 2]
        r2 = x * x + y * y
        k1, k2, k3 = self.k
        p1, p2 = self.p
        radial = 1.0 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
        xd = x * radial + p1 * x * y + p2 * (r2 + x * x)
        yd = y * radial + p1 * (r2 + y * y) + p2 * x * y
        return np.stack([self.f[0] * xd + self.c[0], self.f[1] * yd + self.c[1]], axis=-1)

    def backproject(self, uv, depth):
        """Pinhole back-projection: ``(N, 2)`` px and ``(N,)`` depth mm -> ``(N, 3)`` camera mm.

        Distortion is ignored, as in the volumetric lifting of the paper.
        """
        uv = _checks.as_array("uv", uv, shape=(..., 2))
        depth = _checks.as_array("depth", depth)
        _checks.positive("depth", depth)
        return backproject_pinhole(uv, depth, self.K)

    @classmethod
    def from_correspondences(cls, points_world, uv):
        """A pinhole camera fitted to world points and their pixels (DLT + RQ decomposition).

        For datasets that ship 3D joints and their 2D projections but no
        calibration in a readable form (e.g. the prepared HumanEva-I files).

        Args:
          points_world: (N, 3) mm, N >= 6, not all coplanar.
          uv: (N, 2) px.
        """
        X = _checks.as_array("points_world", points_world, shape=(None, 3))
        uv = _checks.as_array("uv", uv, shape=(len(X), 2))
        if len(X) < 6:
            raise ValueError(f"points_world needs at least 6 points, got {len(X)}")
        # normalise both point sets for a well-conditioned DLT (Hartley)
        mx, sx = X.mean(0), np.sqrt(3) / np.mean(np.linalg.norm(X - X.mean(0), axis=1))
        mu, su = uv.mean(0), np.sqrt(2) / np.mean(np.linalg.norm(uv - uv.mean(0), axis=1))
        Xn, un = (X - mx) * sx, (uv - mu) * su
        rows = []
        for (x, y, z), (u, v) in zip(Xn, un):
            rows.append([x, y, z, 1, 0, 0, 0, 0, -u * x, -u * y, -u * z, -u])
            rows.append([0, 0, 0, 0, x, y, z, 1, -v * x, -v * y, -v * z, -v])
        P = np.linalg.svd(np.asarray(rows))[2][-1].reshape(3, 4)
        Tu = np.array([[su, 0, -su * mu[0]], [0, su, -su * mu[1]], [0, 0, 1]])
        TX = np.diag([sx, sx, sx, 1.0])
        TX[:3, 3] = -sx * mx
        P = np.linalg.inv(Tu) @ P @ TX
        M = P[:, :3]
        if np.linalg.det(M) < 0:
            P, M = -P, -M
        # RQ decomposition M = K R with a positive diagonal K
        flip = np.flipud(np.eye(3))
        Q, Rm = np.linalg.qr((flip @ M).T)
        K = flip @ Rm.T @ flip
        R = flip @ Q.T
        signs = np.diag(np.sign(np.diag(K)))
        K, R = K @ signs, signs @ R
        K /= K[2, 2]
        center = -np.linalg.solve(M, P[:, 3])
        return cls(R=R, T=center, f=[K[0, 0], K[1, 1]], c=[K[0, 2], K[1, 2]])

    @classmethod
    def from_affine(cls, M, reference_point, distance, principal_point):
        """The pinhole camera equivalent to an affine camera near ``reference_point``.

        For datasets whose cameras are affine (scaled orthographic), e.g. KTH
        Football II's ``2x4`` matrices with ``uv = M @ [X, 1]``. Writing
        ``M[:, :3] = L @ [r1; r2]`` (``L`` lower triangular, ``r1, r2``
        orthonormal rows, ``r3 = r1 x r2``), the returned camera has rotation
        ``[r1; r2; r3]``, focal ``diag(L) * distance`` and puts
        ``reference_point`` at depth ``distance`` on the same pixel as ``M``.
        Near that point (depth offsets small against ``distance``) its
        projection equals ``M``'s up to the skew ``L[1, 0]``, which it drops.

        Args:
          M: (2, 4) affine camera, world mm -> px.
          reference_point: (3,) world mm, e.g. the person's centre.
          distance: depth given to ``reference_point``, mm (> 0).
          principal_point: (2,) px, e.g. the image centre.
        """
        M = _checks.as_array("M", M, shape=(2, 4))
        X0 = _checks.as_array("reference_point", reference_point, shape=(3,))
        c = _checks.as_array("principal_point", principal_point, shape=(2,))
        _checks.positive("distance", distance)
        a1, a2 = M[0, :3], M[1, :3]
        scale_u = np.linalg.norm(a1)
        r1 = a1 / max(scale_u, 1e-12)
        a2_perp = a2 - (a2 @ r1) * r1
        scale_v = np.linalg.norm(a2_perp)
        if scale_u < 1e-9 or scale_v < 1e-6 * scale_u:
            raise ValueError(f"M is degenerate (rank < 2 in its 3x2 part): {M.tolist()}")
        r2 = a2_perp / scale_v
        R = np.stack([r1, r2, np.cross(r1, r2)])
        f = np.array([scale_u, scale_v]) * float(distance)
        uv0 = M[:, :3] @ X0 + M[:, 3]
        in_camera = np.array([*((uv0 - c) * float(distance) / f), float(distance)])
        return cls(R=R, T=X0 - R.T @ in_camera, f=f, c=c)

    @classmethod
    def from_h36m(cls, subject, camera_id):
        """The official calibration of a Human3.6M camera, e.g. ``("S9", "54138969")``."""
        table = h36m_camera_table()
        subject = str(subject)
        if subject not in table:
            raise ValueError(f"subject {subject!r} not in the Human3.6M camera table; "
                             f"known: {sorted(k for k in table if not k.startswith('_'))}")
        cameras = table[subject]
        if str(camera_id) not in cameras:
            raise ValueError(f"camera_id {camera_id!r} not in the table for {subject}; "
                             f"known: {sorted(cameras)}")
        entry = cameras[str(camera_id)]
        return cls(R=entry["R"], T=entry["T"], f=entry["f"], c=entry["c"],
                   k=entry["k"], p=entry["p"])

    def __repr__(self):
        return (f"Camera(f={self.f.tolist()}, c={self.c.tolist()}, "
                f"T={np.round(self.T, 1).tolist()})")


@functools.lru_cache(maxsize=1)
def h36m_camera_table():
    """The bundled Human3.6M calibration (from the dataset's metadata.xml)."""
    text = resources.files("tf_volpose").joinpath("resources/h36m_cameras.json").read_text()
    return json.loads(text)


def h36m_image_size(subject, camera_id):
    """``(width, height)`` in px of a Human3.6M camera's frames."""
    entry = h36m_camera_table()[str(subject)][str(camera_id)]
    return int(entry["width"]), int(entry["height"])
