"""msgpack with numpy arrays, byte-compatible with openpi's ``openpi_client.msgpack_numpy``.

An array travels as a msgpack map with *binary* keys, in this order::

    {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": arr.dtype.str, b"shape": arr.shape}

and a numpy scalar as ``{b"__npgeneric__": True, b"data": x.item(), b"dtype": x.dtype.str}``.
Everything else is plain msgpack (``use_bin_type=True``, strings as str). So a prevla client
talks to an openpi policy server and an openpi client to a prevla server.

Unlike lebedov's msgpack-numpy, nothing here ever falls back to pickle: object, void
(structured) and complex dtypes are refused in both directions, exactly the kinds openpi
refuses to pack. The decoder also checks that the byte count matches shape x itemsize,
so a malformed peer message gives a ``ValueError`` instead of a numpy crash.
"""
from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

#: dtype kinds that may cross the wire: bool, ints, floats, bytes/str, datetime/timedelta.
ALLOWED_KINDS = frozenset("biufSUMm")


class ArrayCodecError(ValueError):
    """An array or scalar map from the peer is refused (bad dtype, shape or size)."""


def _check_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.kind not in ALLOWED_KINDS or dtype.hasobject or dtype.fields is not None:
        raise ArrayCodecError(f"unsupported dtype {dtype.str!r} (kind {dtype.kind!r}); expected one of "
                         f"kinds {''.join(sorted(ALLOWED_KINDS))} (object arrays are never sent)")
    return dtype


def _parse_dtype(raw: Any) -> np.dtype:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    if not isinstance(raw, str):
        raise ArrayCodecError(f"ndarray dtype must be a string, got {type(raw).__name__}")
    try:
        dtype = np.dtype(raw)
    except TypeError as exc:
        raise ArrayCodecError(f"unknown dtype string {raw!r}") from exc
    return _check_dtype(dtype)


def pack_array(obj: Any) -> Any:
    """msgpack ``default`` hook: numpy array/scalar -> openpi's map layout; else unchanged."""
    if isinstance(obj, (np.ndarray, np.generic)):
        _check_dtype(obj.dtype)
    if isinstance(obj, np.ndarray):
        return {
            b"__ndarray__": True,
            b"data": obj.tobytes(),  # C order, whatever the input's layout
            b"dtype": obj.dtype.str,
            b"shape": obj.shape,
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    # Raising here (msgpack would raise too) names the type, which helps debug a request.
    raise TypeError(f"cannot msgpack-encode object of type {type(obj).__name__}")


def unpack_array(obj: dict) -> Any:
    """msgpack ``object_hook``: openpi's array/scalar maps -> numpy; other maps unchanged.

    Arrays are read-only views of the received bytes (as in openpi); copy before writing.
    """
    if b"__ndarray__" in obj:
        dtype = _parse_dtype(obj.get(b"dtype"))
        shape_raw = obj.get(b"shape")
        data = obj.get(b"data")
        if not isinstance(shape_raw, (list, tuple)) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape_raw):
            raise ArrayCodecError(f"ndarray shape must be a list of non-negative ints, got {shape_raw!r}")
        if not isinstance(data, bytes):
            raise ArrayCodecError(f"ndarray data must be bytes, got {type(data).__name__}")
        shape = tuple(shape_raw)
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if len(data) != expected:
            raise ArrayCodecError(f"ndarray data has {len(data)} bytes, expected {expected} "
                             f"for shape {shape} dtype {dtype.str}")
        return np.ndarray(buffer=data, dtype=dtype, shape=shape)
    if b"__npgeneric__" in obj:
        dtype = _parse_dtype(obj.get(b"dtype"))
        data = obj.get(b"data")
        if not isinstance(data, (bool, int, float, str, bytes)):  # openpi sends ``x.item()``
            raise ArrayCodecError(f"numpy scalar data must be a plain scalar, got "
                                  f"{type(data).__name__}")
        try:  # e.g. 1000 as int8: OverflowError, which is no ValueError
            return dtype.type(data)
        except (OverflowError, TypeError, ValueError) as exc:
            raise ArrayCodecError(f"numpy scalar of dtype {dtype.str} cannot hold the "
                                  f"{type(data).__name__} sent: {exc}") from exc
    return obj


def packb(obj: Any) -> bytes:
    """Encode ``obj`` (dicts, lists, scalars, str, bytes, numpy arrays) to msgpack bytes."""
    return msgpack.packb(obj, default=pack_array, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Decode msgpack bytes produced by :func:`packb` or by openpi's ``msgpack_numpy``.

    Raises:
        ValueError: malformed msgpack, or an array of a refused dtype / inconsistent size.
    """
    try:
        return msgpack.unpackb(data, object_hook=unpack_array, raw=False)
    except ArrayCodecError:
        raise
    except (ValueError, TypeError, msgpack.exceptions.StackError) as exc:
        # msgpack's own errors (truncated data, bad type byte, non-str map keys...).
        raise ValueError(f"malformed msgpack message: {type(exc).__name__}: {exc}") from exc
