"""A minimal GGUF v3 writer: metadata, F32 tensors and Q8_0/Q4_0 quantised matrices.

Enough for the tiny models edgespec writes itself (the CPU probe's); the `gguf` package, which
does far more, stays a test-only dependency.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

ALIGNMENT = 32
F32, Q4_0, Q8_0 = 0, 2, 8
_BLOCK = 32

# GGUF metadata value types
_U32, _I32, _F32, _BOOL, _STRING, _ARRAY = 4, 5, 6, 7, 8, 9


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


_NP = {np.dtype(np.int32): (_I32, "<i"), np.dtype(np.uint32): (_U32, "<I"), np.dtype(np.float32): (_F32, "<f")}


def _value(v: Any) -> tuple[int, bytes]:
    """(GGUF type, encoding). Python ints are UINT32 (INT32 if negative); a numpy array is an array of
    its dtype (int32, uint32, float32), for keys whose element type llama.cpp checks."""
    if isinstance(v, np.ndarray):
        etype, fmt = _NP[v.dtype]
        return _ARRAY, struct.pack("<IQ", etype, v.size) + v.astype(fmt).tobytes()
    if isinstance(v, bool):
        return _BOOL, struct.pack("<?", v)
    if isinstance(v, int):
        return (_U32, struct.pack("<I", v)) if v >= 0 else (_I32, struct.pack("<i", v))
    if isinstance(v, float):
        return _F32, struct.pack("<f", v)
    if isinstance(v, str):
        return _STRING, _string(v)
    if isinstance(v, (list, tuple)):
        if not v:
            raise ValueError("empty metadata arrays are not written")
        etype = _value(v[0])[0]
        items = b"".join(_value(x)[1] for x in v)
        return _ARRAY, struct.pack("<IQ", etype, len(v)) + items
    raise TypeError(f"unsupported metadata value {v!r}")


def quantize_q8_0(a: np.ndarray) -> bytes:
    """Rows of 32-value blocks: an f16 scale, then 32 int8 (value = d * q)."""
    x = np.asarray(a, dtype=np.float32).reshape(-1, _BLOCK)
    d = np.abs(x).max(axis=1) / 127.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    q = np.clip(np.rint(x * inv[:, None]), -127, 127).astype(np.int8)
    out = np.empty((x.shape[0], 2 + _BLOCK), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.view(np.uint8)
    return out.tobytes()


def quantize_q4_0(a: np.ndarray) -> bytes:
    """Rows of 32-value blocks: an f16 scale, then 16 bytes of nibbles (value = d * (q - 8));
    byte j holds value j in its low nibble and value j + 16 in its high one."""
    x = np.asarray(a, dtype=np.float32).reshape(-1, _BLOCK)
    idx = np.argmax(np.abs(x), axis=1)
    d = x[np.arange(x.shape[0]), idx] / -8.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    q = np.clip(np.floor(x * inv[:, None] + 8.5), 0, 15).astype(np.uint8)
    out = np.empty((x.shape[0], 2 + _BLOCK // 2), dtype=np.uint8)
    out[:, :2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q[:, :16] | (q[:, 16:] << 4)
    return out.tobytes()


def write(path: str | Path, metadata: dict[str, Any], tensors: dict[str, tuple[np.ndarray, int]]) -> Path:
    """Write a GGUF file. tensors: name -> (array in numpy's row-major shape, ggml type id)."""
    path = Path(path)
    infos, blobs, offset = [], [], 0
    for name, (array, ggml_type) in tensors.items():
        a = np.ascontiguousarray(array, dtype=np.float32)
        if ggml_type == F32:
            data = a.tobytes()
        elif ggml_type in (Q8_0, Q4_0):
            if a.shape[-1] % _BLOCK:
                raise ValueError(f"{name}: rows of {a.shape[-1]} values are not whole {_BLOCK}-value blocks")
            data = quantize_q8_0(a) if ggml_type == Q8_0 else quantize_q4_0(a)
        else:
            raise ValueError(f"{name}: ggml type {ggml_type} is not written here")
        dims = list(reversed(a.shape))  # GGUF lists dimensions innermost first
        infos.append(_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
                     + struct.pack("<IQ", ggml_type, offset))
        pad = -len(data) % ALIGNMENT
        blobs.append(data + b"\0" * pad)
        offset += len(data) + pad
    kv = b"".join(_string(k) + struct.pack("<I", _value(v)[0]) + _value(v)[1] for k, v in metadata.items())
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)) + kv + b"".join(infos)
    head += b"\0" * (-len(head) % ALIGNMENT)
    with open(path, "wb") as f:
        f.write(head)
        for b in blobs:
            f.write(b)
    return path
