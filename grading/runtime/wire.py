"""The data that crosses between the judge and the runner: plain values encoded without pickle, framed on a pipe.

What may cross: None, bool, int, float (NaN and infinities included), str, bytes, list, tuple, dict, and NumPy
arrays of numbers, booleans or strings (TensorFlow tensors become arrays on the way out). Arrays travel as
`np.save(..., allow_pickle=False)` blobs, everything else as JSON, so decoding never runs code: the judge gets back
a plain `np.ndarray`, never a subclass, whatever the student's code returned. Self-contained on purpose (NumPy and
the standard library only): the runner loads it as a file, without the `grading` package.

A frame is an 8-byte big-endian length, then a 4-byte length of the JSON header, the header, and the array blobs in
the order the header lists them.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
from collections.abc import Callable

import numpy as np

MAX_FRAME = 256 * 2**20  # bytes: a reply larger than this is refused, so a runner cannot exhaust the judge's memory
MAX_DEPTH = 32  # nesting of lists, tuples and dicts
MAX_ITEMS = 200_000  # values of all kinds in one message
ARRAY_KINDS = "biufcUS"  # bool, int, uint, float, complex, unicode, bytes: never object ('O') or void ('V')


class WireError(Exception):
    """A value that may not cross, or a frame that is not well formed."""


def _to_array(value):
    """A plain ndarray from an array-like the student's code may return (tf.Tensor, np.generic, ndarray subclass)."""
    if hasattr(value, "numpy") and callable(value.numpy):
        value = value.numpy()
    array = np.array(value, copy=True, subok=False)
    if array.dtype.kind not in ARRAY_KINDS:
        raise WireError(f"an array of dtype {array.dtype} cannot be sent (only numbers, booleans and strings)")
    return array


def encode(value: object) -> bytes:
    """Returns the bytes of one message holding `value` (raises WireError for what may not cross)."""
    arrays = []
    count = [0]

    def walk(x, depth):
        count[0] += 1
        if count[0] > MAX_ITEMS:
            raise WireError(f"too many values in one message (more than {MAX_ITEMS})")
        if depth > MAX_DEPTH:
            raise WireError(f"values nested deeper than {MAX_DEPTH}")
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return x if type(x) is int else int(x)
        if isinstance(x, float):
            x = float(x)
            return x if math.isfinite(x) else {"$float": repr(x)}
        if isinstance(x, bytes):
            return {"$bytes": x.hex()}
        if isinstance(x, (list, tuple)):
            items = [walk(v, depth + 1) for v in x]
            return items if isinstance(x, list) else {"$tuple": items}
        if isinstance(x, dict):
            return {"$dict": [[walk(k, depth + 1), walk(v, depth + 1)] for k, v in x.items()]}
        if isinstance(x, np.ndarray | np.generic) or hasattr(x, "numpy") or hasattr(x, "__array__"):
            arrays.append(_to_array(x))
            return {"$array": len(arrays) - 1}
        raise WireError(f"a value of type {type(x).__name__} cannot be sent: return arrays, numbers, strings, lists")

    header = json.dumps({"value": walk(value, 0), "arrays": len(arrays)}, allow_nan=False).encode()
    blobs = []
    for array in arrays:
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        blob = buf.getvalue()
        blobs.append(struct.pack(">Q", len(blob)) + blob)
    body = struct.pack(">I", len(header)) + header + b"".join(blobs)
    if len(body) > MAX_FRAME:
        raise WireError(f"the message is {len(body)} bytes, more than the limit of {MAX_FRAME}")
    return body


def decode(body: bytes) -> object:
    """Returns the value of one message; only plain types come out (raises WireError otherwise)."""
    try:
        (size,) = struct.unpack(">I", body[:4])
        header = json.loads(body[4 : 4 + size], parse_constant=_no_constant)
        offset = 4 + size
        arrays = []
        for _ in range(int(header["arrays"])):
            (n,) = struct.unpack(">Q", body[offset : offset + 8])
            blob = body[offset + 8 : offset + 8 + n]
            offset += 8 + n
            array = np.load(io.BytesIO(blob), allow_pickle=False)
            if type(array) is not np.ndarray or array.dtype.kind not in ARRAY_KINDS:
                raise WireError("an array of a type that may not cross")
            arrays.append(array)
    except WireError:
        raise
    except Exception as exc:  # a malformed frame: struct, JSON, np.load errors
        raise WireError(f"malformed message ({type(exc).__name__}: {str(exc)[:200]})") from None
    count = [0]

    def build(x, depth):
        count[0] += 1
        if count[0] > MAX_ITEMS or depth > MAX_DEPTH:
            raise WireError("message too large or too deep")
        if x is None or type(x) in (bool, int, float, str):
            return x
        if type(x) is list:
            return [build(v, depth + 1) for v in x]
        if type(x) is dict and len(x) == 1:
            ((tag, v),) = x.items()
            if tag == "$tuple" and type(v) is list:
                return tuple(build(i, depth + 1) for i in v)
            if tag == "$dict" and type(v) is list:
                out = {}
                for pair in v:
                    if type(pair) is not list or len(pair) != 2:
                        raise WireError("malformed dict")
                    key = build(pair[0], depth + 1)
                    if type(key) not in (str, int, float, bool, tuple) and key is not None:
                        raise WireError("unhashable dict key")
                    out[key] = build(pair[1], depth + 1)
                return out
            if tag == "$array" and type(v) is int and 0 <= v < len(arrays):
                return arrays[v]
            if tag == "$float" and v in ("nan", "inf", "-inf"):
                return float(v)
            if tag == "$bytes" and type(v) is str:
                return bytes.fromhex(v)
        raise WireError(f"malformed value of type {type(x).__name__}")

    return build(header["value"], 0)


def _no_constant(name):
    raise WireError(f"bare {name} in a message")


def roundtrip(value: object) -> object:
    """`value` as the judge would receive it: what the in-process mode returns, so both modes see the same types."""
    return decode(encode(value))


# ---------------------------------------------------------------------------------------------------------------
# Frames on a pipe.


def send(fd: int, value: object) -> None:
    """Writes one framed message holding `value` to the file descriptor `fd`."""
    write_frame(fd, encode(value))


def write_frame(fd: int, body: bytes) -> None:
    """Writes one already encoded message to `fd`."""
    view = memoryview(struct.pack(">Q", len(body)) + body)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_exactly(fd: int, n: int, wait: Callable[[int], object] | None = None) -> bytes:
    """Reads `n` bytes from `fd`; `wait(fd)` blocks until readable or raises (the judge's deadline)."""
    chunks, left = [], n
    while left:
        if wait is not None:
            wait(fd)
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(fd: int, wait: Callable[[int], object] | None = None) -> object:
    """Reads one framed message from `fd` and returns its value."""
    (size,) = struct.unpack(">Q", read_exactly(fd, 8, wait))
    if size > MAX_FRAME:
        raise WireError(f"a message of {size} bytes is larger than the limit of {MAX_FRAME}")
    return decode(read_exactly(fd, size, wait))
