"""Read a GGUF file's header (metadata and tensor table) without loading any weights.

The header is parsed here rather than with the `gguf` package's GGUFReader: that reader decodes
every key into numpy arrays, which takes about 7 s on two cores for a 152k-token vocabulary, while
the planner and `models info` need a few scalars, the tensor table and (to check a pairing) the
token list. This parser memory-maps the file, skips the arrays it is not asked for and reads a
1.1 GB model's header in well under a second. The tables below follow ggml.h and llama.h; a test
checks them against the `gguf` package.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgespec.errors import ModelLoadError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# ggml_type id -> (name, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}
GGML_TYPE_IDS = {name: i for i, (name, _, _) in GGML_TYPES.items()}

# general.file_type (llama_ftype) -> the quantisation name users know
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}

# GGUF metadata value types
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


class GGUFError(ModelLoadError):
    """The file is not a readable GGUF (wrong magic, unsupported version, truncated header)."""


def type_size(ggml_type: int, n_elements: int) -> int:
    """Bytes that `n_elements` values of a ggml type take (whole blocks)."""
    if ggml_type not in GGML_TYPES:
        raise GGUFError(f"unknown ggml tensor type {ggml_type}", "this edgespec is older than the model file; update edgespec")
    _, block, size = GGML_TYPES[ggml_type]
    return (n_elements + block - 1) // block * size


@dataclass(frozen=True)
class ArrayInfo:
    """An array value that was not decoded: its element type and length."""

    type: int
    count: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: shape[0] is the row length
    type: int
    offset: int  # relative to the start of the data section
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.type, (f"type{self.type}",))[0]

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def layer(self) -> int | None:
        m = _LAYER_RE.match(self.name)
        return int(m.group(1)) if m else None


@dataclass
class GGUFInfo:
    path: Path
    file_size: int
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    data_offset: int
    alignment: int
    tokens: list[bytes] | None = field(default=None, repr=False)

    # ------------------------------------------------------------ metadata
    def get(self, key: str, default: Any = None) -> Any:
        v = self.metadata.get(key, default)
        return default if isinstance(v, ArrayInfo) else v

    def arch_key(self, suffix: str, default: Any = None) -> Any:
        return self.get(f"{self.arch}.{suffix}", default)

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def name(self) -> str | None:
        return self.get("general.name")

    @property
    def n_layer(self) -> int:
        n = self.arch_key("block_count")
        if n is None:  # fall back to the tensor names
            layers = [t.layer for t in self.tensors if t.layer is not None]
            n = max(layers) + 1 if layers else 0
        return int(n)

    @property
    def n_embd(self) -> int:
        return int(self.arch_key("embedding_length", 0) or 0)

    @property
    def n_ff(self) -> int:
        v = self.metadata.get(f"{self.arch}.feed_forward_length", 0)
        if isinstance(v, list):
            return int(max(v)) if v else 0
        return int(v or 0) if not isinstance(v, ArrayInfo) else 0

    @property
    def n_head(self) -> int:
        v = self.metadata.get(f"{self.arch}.attention.head_count", 0)
        if isinstance(v, list):
            return int(max(v)) if v else 0
        return int(v or 0) if not isinstance(v, ArrayInfo) else 0

    def n_head_kv_per_layer(self) -> list[int]:
        """KV heads of each layer (a scalar in most files, a per-layer array in some)."""
        v = self.metadata.get(f"{self.arch}.attention.head_count_kv", None)
        if isinstance(v, list) and len(v) == self.n_layer:
            return [int(x) for x in v]
        if v is None or isinstance(v, (list, ArrayInfo)):
            v = self.n_head
        return [int(v)] * self.n_layer

    @property
    def head_dim_k(self) -> int:
        v = self.arch_key("attention.key_length")
        return int(v) if v else (self.n_embd // self.n_head if self.n_head else 0)

    @property
    def head_dim_v(self) -> int:
        v = self.arch_key("attention.value_length")
        return int(v) if v else (self.n_embd // self.n_head if self.n_head else 0)

    @property
    def context_length(self) -> int | None:
        v = self.arch_key("context_length")
        return int(v) if v else None

    @property
    def vocab_size(self) -> int:
        v = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(v, ArrayInfo):
            return v.count
        if self.tokens is not None:
            return len(self.tokens)
        n = self.arch_key("vocab_size")
        if n:
            return int(n)
        emb = self.tensor("token_embd.weight")
        return emb.shape[1] if emb and len(emb.shape) > 1 else 0

    @property
    def n_merges(self) -> int:
        v = self.metadata.get("tokenizer.ggml.merges")
        return v.count if isinstance(v, ArrayInfo) else len(v) if isinstance(v, list) else 0

    @property
    def tokenizer_model(self) -> str | None:
        return self.get("tokenizer.ggml.model")

    @property
    def bos(self) -> int | None:
        return self.get("tokenizer.ggml.bos_token_id")

    @property
    def eos(self) -> int | None:
        return self.get("tokenizer.ggml.eos_token_id")

    @property
    def has_chat_template(self) -> bool:
        return bool(self.get("tokenizer.chat_template"))

    @property
    def file_type(self) -> str | None:
        """The quantisation named in general.file_type (e.g. Q4_K_M); None if the file does not say."""
        ft = self.get("general.file_type")
        if ft is None:
            return None
        return FILE_TYPES.get(int(ft), f"ftype {ft}")

    @property
    def sliding_window(self) -> int | None:
        v = self.arch_key("attention.sliding_window")
        return int(v) if v else None

    # ------------------------------------------------------------- tensors
    def token_text(self, i: int) -> bytes | None:
        """A token's stored text (None when the header was read without its token list)."""
        return self.tokens[i] if self.tokens is not None and i < len(self.tokens) else None

    def tensor(self, name: str) -> TensorInfo | None:
        for t in self.tensors:
            if t.name == name:
                return t
        return None

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def data_end(self) -> int:
        """Where the last tensor's data ends; a file shorter than this is truncated."""
        if not self.tensors:
            return self.data_offset
        return self.data_offset + max(t.offset + t.nbytes for t in self.tensors)

    def layer_bytes(self) -> list[int]:
        """Weight bytes of each repeating layer (blk.N.*)."""
        out = [0] * self.n_layer
        for t in self.tensors:
            if t.layer is not None and t.layer < len(out):
                out[t.layer] += t.nbytes
        return out

    def output_bytes(self) -> int:
        """Weights of llama.cpp's "output layer" (output norm and projection), offloaded last."""
        return sum(t.nbytes for t in self.tensors if t.layer is None and t.name.startswith("output"))

    def input_bytes(self) -> int:
        """Weights that always stay on the CPU (token embeddings and other non-layer tensors)."""
        return sum(t.nbytes for t in self.tensors if t.layer is None and not t.name.startswith("output"))

    def bytes_by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.type_name] = out.get(t.type_name, 0) + t.nbytes
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    @property
    def bits_per_weight(self) -> float:
        n = self.n_params
        return 8.0 * self.tensor_bytes / n if n else 0.0

    def check_complete(self) -> None:
        """Raise unless the file holds every byte its tensor table promises."""
        if self.file_size < self.data_end:
            raise GGUFError(
                f"{self.path} is truncated: {self.file_size} bytes, its tensors need {self.data_end}",
                "download it again",
            )


def check_file(path: str | os.PathLike) -> Path:
    """Fail early, with one line, unless `path` is a readable file that starts like a GGUF."""
    p = Path(path).expanduser()
    if not p.exists():
        raise GGUFError(f"model file not found: {p}", "check the path, or use --pair to pick a registered model")
    if p.is_dir():
        raise GGUFError(f"{p} is a directory, not a .gguf model file")
    try:
        with open(p, "rb") as f:
            head = f.read(24)
    except OSError as e:
        raise GGUFError(f"cannot read {p}: {e.strerror or e}") from e
    if head[:4] != GGUF_MAGIC:
        what = f"it starts with {head[:4]!r}, expected b'GGUF'" if len(head) >= 4 else f"{len(head)} bytes"
        raise GGUFError(f"{p} is not a GGUF file ({what})", "pass a llama.cpp .gguf model")
    return p


def read(path: str | os.PathLike, *, tokens: bool = False) -> GGUFInfo:
    """Parse the header of a GGUF file. With tokens=True the vocabulary's token texts are kept."""
    p = check_file(path)
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise GGUFError(f"{p} is not a GGUF file ({size} bytes)", "pass a llama.cpp .gguf model")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _parse(p, size, mm, tokens)
    except OSError as e:
        raise GGUFError(f"cannot read {p}: {e.strerror or e}") from e


def _parse(path: Path, size: int, mm: mmap.mmap, want_tokens: bool) -> GGUFInfo:
    if mm[:4] != GGUF_MAGIC:
        raise GGUFError(f"{path} is not a GGUF file (it starts with {bytes(mm[:4])!r}, expected b'GGUF')", "pass a llama.cpp .gguf model")
    version = struct.unpack_from("<I", mm, 4)[0]
    if version not in (2, 3):
        raise GGUFError(f"{path}: unsupported GGUF version {version}", "convert the model with a current llama.cpp")
    try:
        n_tensors, n_kv = struct.unpack_from("<QQ", mm, 8)
        off = 24
        meta: dict[str, Any] = {}
        tokens: list[bytes] | None = None
        for _ in range(n_kv):
            key, off = _string(mm, off)
            vtype = struct.unpack_from("<I", mm, off)[0]
            off += 4
            k = key.decode("utf-8", "replace")
            if vtype == _ARRAY:
                etype, count = struct.unpack_from("<IQ", mm, off)
                off += 12
                if k == "tokenizer.ggml.tokens" and want_tokens and etype == _STRING:
                    tokens, off = _string_list(mm, off, count)
                    meta[k] = ArrayInfo(etype, count)
                elif count <= 4096 and etype in _SCALARS:  # small arrays (per-layer values) are decoded
                    fmt = _SCALARS[etype]
                    step = struct.calcsize(fmt)
                    meta[k] = [struct.unpack_from(fmt, mm, off + i * step)[0] for i in range(count)]
                    off += step * count
                else:
                    off = _skip_array(mm, off, etype, count)
                    meta[k] = ArrayInfo(etype, count)
            else:
                meta[k], off = _value(mm, off, vtype)
        tensors = []
        for _ in range(n_tensors):
            name, off = _string(mm, off)
            n_dims = struct.unpack_from("<I", mm, off)[0]
            off += 4
            if n_dims > 8:
                raise GGUFError(f"{path}: corrupt tensor table (a tensor with {n_dims} dimensions)", "download it again")
            shape = struct.unpack_from(f"<{n_dims}Q", mm, off)
            off += 8 * n_dims
            ttype, toff = struct.unpack_from("<IQ", mm, off)
            off += 12
            tname = name.decode("utf-8", "replace")
            tensors.append(TensorInfo(tname, tuple(int(s) for s in shape), ttype, toff, _tensor_bytes(ttype, shape, tname)))
    except (struct.error, IndexError, ValueError, OverflowError) as e:
        raise GGUFError(f"{path}: truncated or corrupt GGUF header", "download it again") from e
    alignment = int(meta.get("general.alignment", DEFAULT_ALIGNMENT) or DEFAULT_ALIGNMENT)
    data_offset = (off + alignment - 1) // alignment * alignment
    return GGUFInfo(path, size, version, meta, tensors, data_offset, alignment, tokens)


def _tensor_bytes(ttype: int, shape, name: str) -> int:
    if ttype not in GGML_TYPES:
        raise GGUFError(f"tensor {name} has an unknown ggml type {ttype}", "this edgespec is older than the model file; update edgespec")
    _, block, bsize = GGML_TYPES[ttype]
    row = shape[0] if shape else 1
    rows = math.prod(shape[1:]) if len(shape) > 1 else 1
    return (row + block - 1) // block * bsize * rows


def _string(mm, off: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("<Q", mm, off)
    end = off + 8 + n
    if end > len(mm):
        raise ValueError("string past the end of the file")
    return mm[off + 8 : end], end


def _string_list(mm, off: int, count: int) -> tuple[list[bytes], int]:
    out = []
    unpack = struct.Struct("<Q").unpack_from
    for _ in range(count):
        (n,) = unpack(mm, off)
        out.append(mm[off + 8 : off + 8 + n])
        off += 8 + n
    if off > len(mm):
        raise ValueError("array past the end of the file")
    return out, off


def _skip_array(mm, off: int, etype: int, count: int) -> int:
    if etype in _SCALARS:
        return off + struct.calcsize(_SCALARS[etype]) * count
    if etype == _STRING:
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(count):
            off += 8 + unpack(mm, off)[0]
        if off > len(mm):
            raise ValueError("array past the end of the file")
        return off
    if etype == _ARRAY:  # nested arrays: rare, walk them
        for _ in range(count):
            et, n = struct.unpack_from("<IQ", mm, off)
            off = _skip_array(mm, off + 12, et, n)
        return off
    raise ValueError(f"unknown GGUF value type {etype}")


def _value(mm, off: int, vtype: int) -> tuple[Any, int]:
    if vtype == _STRING:
        s, off = _string(mm, off)
        return s.decode("utf-8", "replace"), off
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack_from(fmt, mm, off)[0], off + struct.calcsize(fmt)
    raise ValueError(f"unknown GGUF value type {vtype}")
