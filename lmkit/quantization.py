"""Quantization helpers: group-wise symmetric round-to-nearest, int4 packed two per byte, fake quantization and
stored sizes (given, not graded)."""

import math

import numpy as np
from numpy.typing import ArrayLike


def quantize(w: ArrayLike, bits: int, group_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns `(q, scales)`: `w` quantized to signed `bits`-bit integers, one scale per group.

    Groups are runs of `group_size` consecutive elements along the last axis (the whole last axis when None); a
    last axis that `group_size` does not divide ends with a shorter group. Each group's scale is its largest
    magnitude divided by `qmax = 2**(bits - 1) - 1`, stored as float16 (rounded up, so nothing clips), and
    `q = round(w / scale)` lies in `[-qmax, qmax]`: every element is off by at most half its group's scale.

    Args:
        w: float array `(..., K)`.
        bits: 2 to 8.
        group_size: elements per group (>= 1), or None for one group per row.

    Returns:
        q: int8 array of `w`'s shape.
        scales: float16 array `(..., G)` with `G = ceil(K / group_size)`.
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8; got {bits}")
    w = np.asarray(w, np.float32)
    k = w.shape[-1]
    g = k if group_size is None else int(group_size)
    if g < 1:
        raise ValueError(f"group_size must be >= 1 or None; got {group_size}")
    qmax = 2 ** (bits - 1) - 1
    groups = -(-k // g)
    padded = np.zeros(w.shape[:-1] + (groups * g,), np.float32)
    padded[..., :k] = w
    blocks = padded.reshape(w.shape[:-1] + (groups, g))  # (..., G, g)
    scales = (np.abs(blocks).max(-1) / qmax).astype(np.float32)  # (..., G)
    stored = scales.astype(np.float16)
    low = stored.astype(np.float32) < scales  # rounded down: one float16 step up, so |w| / scale <= qmax
    stored[low] = np.nextafter(stored[low], np.float16(np.inf))
    safe = np.where(stored > 0, stored.astype(np.float32), 1.0)  # an all-zero group quantizes to zeros
    q = np.clip(np.rint(blocks / safe[..., None]), -qmax, qmax).astype(np.int8)  # (..., G, g)
    return q.reshape(w.shape[:-1] + (groups * g,))[..., :k], stored


def dequantize(q: ArrayLike, scales: ArrayLike, group_size: int | None = None) -> np.ndarray:
    """Returns the float32 array `q * scale` that `quantize` encoded (same shape as `q`)."""
    q = np.asarray(q)
    k = q.shape[-1]
    g = k if group_size is None else int(group_size)
    per_element = np.repeat(np.asarray(scales, np.float32), g, axis=-1)[..., :k]  # (..., K)
    return q.astype(np.float32) * per_element


def pack_int4(q: ArrayLike) -> np.ndarray:
    """Returns uint8 `(ceil(n / 2),)`: the n int4 values of `q` (each in [-8, 7]) two per byte, the even-indexed
    one in the low nibble (a trailing zero nibble pads an odd n)."""
    flat = np.asarray(q, np.int8).reshape(-1)
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        raise ValueError(f"int4 values must lie in [-8, 7]; got [{flat.min()}, {flat.max()}]")
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    nibbles = flat.astype(np.uint8) & 0x0F  # two's complement in 4 bits
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: ArrayLike, n: int) -> np.ndarray:
    """Returns int8 `(n,)`: the first n values that `pack_int4` packed into `packed`."""
    packed = np.asarray(packed, np.uint8)
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)[:n].astype(np.int8)
    return np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8)


def stored_bytes(num_values: int, bits: int, num_scales: int) -> int:
    """Returns the bytes of `num_values` codes of `bits` bits (int4: two per byte) and their float16 scales."""
    code_bytes = num_values if bits == 8 else math.ceil(num_values * bits / 8)
    return code_bytes + 2 * num_scales


def fake_quantize(w: ArrayLike, bits: int, group_size: int | None = None) -> np.ndarray:
    """Returns `dequantize(*quantize(w, bits, group_size))`: what the model computes with after quantizing."""
    q, scales = quantize(w, bits, group_size)
    if bits == 4:  # through the packed form, as it would be stored
        q = unpack_int4(pack_int4(q), q.size).reshape(q.shape)
    return dequantize(q, scales, group_size)
