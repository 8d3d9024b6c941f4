"""Argument checks shared by the library: errors name the argument and value."""

import numpy as np


def _short(value):
    text = np.array2string(np.asarray(value), threshold=8, precision=4)
    return text if len(text) < 120 else text[:117] + "..."


def as_array(name, value, shape=None, dtype=np.float64, finite=True):
    """Converts ``value`` to an array and checks its shape and finiteness.

    Args:
      name: argument name used in error messages.
      value: array-like.
      shape: expected shape; ``None`` entries match any size, a leading
        ``...`` matches any leading dimensions.
      dtype: dtype to convert to.
      finite: whether NaN/Inf values are an error.

    Raises:
      ValueError: naming ``name`` and the offending value.
    """
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric, got {value!r}") from e
    if shape is not None:
        expected = list(shape)
        actual = list(array.shape)
        if expected and expected[0] is Ellipsis:
            expected = expected[1:]
            actual = actual[len(actual) - len(expected):] if len(actual) >= len(expected) else None
        ok = actual is not None and len(actual) == len(expected) and all(
            e is None or e == a for e, a in zip(expected, actual))
        if not ok:
            want = tuple("..." if e is Ellipsis else ("N" if e is None else e) for e in shape)
            raise ValueError(f"{name} must have shape {want}, got shape {array.shape}")
    if finite and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or Inf: {_short(array)}")
    return array


def positive(name, value):
    """Checks a positive finite scalar (or all-positive array)."""
    array = as_array(name, value)
    if not np.all(array > 0):
        raise ValueError(f"{name} must be positive, got {_short(array)}")
    return array.item() if array.ndim == 0 else array


def intrinsics(K):
    """Checks a 3x3 pinhole intrinsics matrix with positive focal lengths."""
    K = as_array("K", K, shape=(3, 3))
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"K must have positive focal lengths, got {_short(K)}")
    return K
