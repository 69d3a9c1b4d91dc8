"""One llama.cpp model with its context: load, batched decode, zero-copy logits, KV rollback, tokenizer.

Built on llama-cpp-python's low-level ctypes API. The high-level `Llama` class is not used: with
logits for every position it allocates n_ctx x n_vocab floats and it re-evaluates on rollback.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import os
import threading
from typing import Callable, Sequence

import numpy as np

from edgespec.core.prefix import common_prefix
from edgespec.errors import ContextOverflowError, EdgespecError, Interrupted, ModelLoadError, RollbackError
from edgespec.llama.gguf_read import check_file as check_gguf
from edgespec.machine import cpu_paths

import llama_cpp as lc  # noqa: E402  (after our imports so its logger set-up is replaced below)


# llama.cpp writes a lot to stderr while loading. Keep the recent lines so a failure can quote the
# reason, and print them only when asked (EDGESPEC_DEBUG=1).
_log_lines: collections.deque[str] = collections.deque(maxlen=200)
_log_partial: list[str] = []
_backend_lock = threading.Lock()
_backend_ready = False


@lc.llama_log_callback
def _log_callback(level, text, user_data):  # pragma: no cover - called from C
    s = text.decode("utf-8", errors="replace") if text else ""
    if os.environ.get("EDGESPEC_DEBUG") or os.environ.get("EDGESPEC_LLAMA_LOG"):
        os.write(2, s.encode("utf-8", errors="replace"))
    _log_partial.append(s)
    if s.endswith("\n"):
        _log_lines.append("".join(_log_partial).rstrip())
        _log_partial.clear()


def _ensure_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
            lc.llama_backend_init()
            _backend_ready = True


def _last_llama_error() -> str | None:
    """The most telling recent llama.cpp log line (an error, or the last line)."""
    for line in reversed(_log_lines):
        low = line.lower()
        if "error" in low or "failed" in low or "corrupt" in low or "not within" in low:
            return line.split(":", 1)[-1].strip() if ": " in line else line.strip()
    return None


def default_threads() -> int:
    """Math threads: all cores on small machines, half (the physical ones, usually) on larger ones."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    return n if n <= 4 else max(4, n // 2)


class Model:
    """A GGUF model, its llama.cpp context and one sequence's KV cache.

    `n_past` is the number of positions in the KV cache. `eval` appends tokens; `rollback` drops
    positions from the end. Logits come back as numpy views into llama.cpp's buffer, valid until the
    next `eval`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        n_batch: int = 512,
        use_mmap: bool = True,
        use_mlock: bool = False,
        type_k: int | None = None,
        type_v: int | None = None,
        flash_attn: bool | None = None,
        cpu: "cpu_paths.Decision | str | None" = None,
    ):
        """cpu: how to treat llama.cpp's AMX path (a cpu_paths.Decision, or a setting: auto, on, off;
        None: $EDGESPEC_AMX, else auto)."""
        self.path = check_gguf(path)
        _ensure_backend()
        self._model = self._ctx = None
        self._batch = None
        self._owns_model = True

        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = int(n_gpu_layers)
        if use_mlock:
            mparams.load_mode = lc.LLAMA_LOAD_MODE_MMAP_MLOCK if use_mmap else lc.LLAMA_LOAD_MODE_MLOCK
        elif not use_mmap:
            mparams.load_mode = lc.LLAMA_LOAD_MODE_NONE
        self.cpu_paths = self._weight_paths(mparams, cpu, int(n_gpu_layers))
        _log_lines.clear()
        model = lc.llama_model_load_from_file(str(self.path).encode("utf-8"), mparams)
        if not model:
            reason = _last_llama_error()
            raise ModelLoadError(
                f"llama.cpp could not load {self.path}" + (f": {reason}" if reason else ""),
                "the file may be truncated or corrupt; download it again",
            )
        self._model = model
        self.vocab_ptr = lc.llama_model_get_vocab(model)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab_ptr))
        self.n_ctx_train = int(lc.llama_model_n_ctx_train(model))

        threads = int(n_threads or default_threads())
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = int(n_ctx)
        cparams.n_batch = cparams.n_ubatch = int(n_batch)
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.no_perf = True
        if type_k is not None:
            cparams.type_k = int(type_k)
        if type_v is not None:
            cparams.type_v = int(type_v)
        # True: on (a quantised V cache needs it); False: off; None: llama.cpp's choice (on where the
        # backend has the kernel, which on a CPU is always)
        cparams.flash_attn_type = {True: lc.LLAMA_FLASH_ATTN_TYPE_ENABLED, False: lc.LLAMA_FLASH_ATTN_TYPE_DISABLED,
                                   None: lc.LLAMA_FLASH_ATTN_TYPE_AUTO}[flash_attn]
        self.flash_attn = {True: "on", False: "off", None: "auto"}[flash_attn]
        self._cparams = cparams
        self.n_batch = int(n_batch)
        self.n_threads = threads
        self.n_gpu_layers = int(n_gpu_layers)
        self.plan = None  # the memory plan it was loaded with (edgespec.memory.Plan), when there was one
        self._open_context(cparams)
        self._pieces: list[bytes | None] = [None] * self.n_vocab

    def _weight_paths(self, mparams, cpu, n_gpu_layers: int) -> dict:
        """Set up which CPU buffer types the weights may use; returns what was chosen, for reports."""
        decision = cpu if isinstance(cpu, cpu_paths.Decision) else cpu_paths.decide(cpu)
        placed = {"model": self.path.name, "amx": decision.use_amx}
        if decision.avoids_amx:
            # No extra buffer types (that is what selects AMX), and the CPU repack by name for the
            # weights it supports: llama.cpp would otherwise pick it for them itself.
            ov = cpu_paths.repack_overrides(self.path, n_gpu_layers, has_gpu=bool(lc.llama_supports_gpu_offload()))
            mparams.use_extra_bufts = False
            if ov.array is not None:
                mparams.tensor_buft_overrides = ov.pointer()
            self._overrides = ov  # llama.cpp reads the patterns while loading
            placed["cpu_repack"] = f"{ov.tensors} of {ov.matrices} weight matrices (by name)"
        else:
            placed["cpu_repack"] = "llama.cpp's choice" if "CPU_REPACK" in cpu_paths.extra_buffer_types() else "not in this build"
        return placed

    def _open_context(self, cparams) -> None:
        ctx = lc.llama_init_from_model(self._model, cparams)
        if not ctx:
            reason = _last_llama_error()
            self.close()
            raise ModelLoadError(
                f"llama.cpp could not create a {cparams.n_ctx}-token context for {self.path.name}"
                + (f": {reason}" if reason else ""),
                "try a smaller --ctx",
            )
        self._ctx = ctx
        self._mem = lc.llama_get_memory(ctx)
        self.n_ctx = int(lc.llama_n_ctx(ctx))
        self.tokens: list[int] = []  # what the KV cache holds, position by position
        self.n_evaluated = 0  # tokens pushed through llama_decode by this context, in all
        # Asked between the batches of a long evaluation (a prompt); True stops it there with Interrupted,
        # the cache holding the batches done. None: never.
        self.should_stop: Callable[[], bool] | None = None

        # One reusable batch; numpy views over its arrays make filling it cheap.
        self._batch = lc.llama_batch_init(self.n_batch, 0, 1)
        b = self._batch
        self._b_token = np.ctypeslib.as_array(b.token, shape=(self.n_batch,))
        self._b_pos = np.ctypeslib.as_array(b.pos, shape=(self.n_batch,))
        self._b_logits = np.ctypeslib.as_array(b.logits, shape=(self.n_batch,))
        np.ctypeslib.as_array(b.n_seq_id, shape=(self.n_batch,))[:] = 1
        for i in range(self.n_batch):
            b.seq_id[i][0] = 0

    def twin(self, n_ctx: int | None = None) -> "Model":
        """A second context (its own KV cache and batch) on the same loaded weights, for running two
        generations side by side (edgespec bench --lockstep). Close it before this model."""
        t = Model.__new__(Model)
        t.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("_ctx", "_mem", "_batch", "tokens")})
        t._owns_model = False
        t._ctx = t._batch = None
        cparams = type(self._cparams).from_buffer_copy(self._cparams)
        if n_ctx is not None:
            cparams.n_ctx = int(n_ctx)
        t._cparams = cparams
        t._open_context(cparams)
        return t

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Free the context and the model (safe to call twice)."""
        if self._batch is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lc.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            if self._owns_model:
                lc.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------- decode
    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def eval(self, tokens: Sequence[int], logits: str = "last") -> np.ndarray | None:
        """Append `tokens` to the KV cache in one pass per n_batch chunk.

        logits: "none", "last" (one row) or "all" (a row per token; needs len(tokens) <= n_batch).
        Returns a float32 view of shape (rows, n_vocab) into llama.cpp's buffer, or None.
        """
        n = len(tokens)
        if n == 0:
            raise ValueError("eval needs at least one token")
        if self.n_past + n > self.n_ctx:
            raise ContextOverflowError(
                f"context full: {self.n_past} + {n} tokens exceed the {self.n_ctx}-token context of {self.path.name}",
                "use a larger --ctx or fewer --max-tokens",
            )
        if logits == "all" and n > self.n_batch:
            raise ValueError(f"logits for {n} positions exceed the batch size {self.n_batch}")
        toks = np.asarray(tokens, dtype=np.int32)
        for start in range(0, n, self.n_batch):
            if start and self.should_stop is not None and self.should_stop():
                raise Interrupted(f"stopped after {start} of {n} tokens")
            chunk = toks[start : start + self.n_batch]
            m = len(chunk)
            self._b_token[:m] = chunk
            self._b_pos[:m] = np.arange(self.n_past, self.n_past + m, dtype=np.int32)
            self._b_logits[:m] = 1 if logits == "all" else 0
            if logits == "last" and start + m == n:
                self._b_logits[m - 1] = 1
            self._batch.n_tokens = m
            rc = lc.llama_decode(self._ctx, self._batch)
            if rc != 0:
                raise EdgespecError(f"llama_decode failed with code {rc} on {self.path.name} at position {self.n_past}")
            self.tokens.extend(int(t) for t in chunk)
            self.n_evaluated += m
        if logits == "none":
            return None
        rows = n if logits == "all" else 1
        ptr = lc.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(rows, self.n_vocab))

    def rollback(self, n_past: int) -> None:
        """Drop every KV position >= n_past.

        Always asks llama.cpp, even when `tokens` says there is nothing to drop: a Ctrl-C that lands
        between llama_decode and the bookkeeping leaves positions only the KV cache knows about.
        Raises RollbackError where the memory cannot drop a tail (recurrent and hybrid models keep a
        state, not positions: only the whole sequence can go).
        """
        if not lc.llama_memory_seq_rm(self._mem, 0, n_past, -1):
            raise RollbackError(
                f"{self.path.name} cannot drop its last {len(self.tokens) - n_past} cached tokens "
                f"({'a recurrent or hybrid model' if not self.can_rollback else 'llama.cpp refused'})"
            )
        del self.tokens[n_past:]

    @functools.cached_property
    def can_rollback(self) -> bool:
        """Whether the KV cache can drop a tail of positions (what speculation needs to undo a
        rejected draft). Recurrent (Mamba, RWKV) and hybrid models keep a running state instead."""
        return not (lc.llama_model_is_recurrent(self._model) or lc.llama_model_is_hybrid(self._model))

    def advance_to(self, tokens: Sequence[int], logits: str = "none") -> np.ndarray | None:
        """Make the KV cache hold exactly `tokens`, evaluating only what it does not already hold.

        With logits="last" the final token is always evaluated, so its logits are fresh. A model
        that cannot drop a tail starts over when the cache holds more than the common prefix.
        """
        p = common_prefix(self.tokens, tokens)
        if logits != "none":
            p = min(p, len(tokens) - 1)
        if p < len(self.tokens) and not self.can_rollback:
            p = 0
        self.rollback(p)
        if p < len(tokens):
            return self.eval(tokens[p:], logits)
        return None

    def reset(self) -> None:
        self.rollback(0)

    # --------------------------------------------------------------- saved state
    def state_size(self) -> int:
        """Bytes save_state would copy now."""
        return int(lc.llama_state_seq_get_size(self._ctx, 0))

    def save_state(self) -> "ctypes.Array":
        """A copy of this context's KV cache (its one sequence), to restore later with restore_state."""
        n = self.state_size()
        buf = (ctypes.c_uint8 * max(n, 1))()
        got = int(lc.llama_state_seq_get_data(self._ctx, buf, n, 0)) if n else 0
        if got != n:
            raise EdgespecError(f"llama.cpp saved {got} of {n} bytes of the KV cache of {self.path.name}")
        return buf

    def restore_state(self, tokens: Sequence[int], state: "ctypes.Array") -> None:
        """Make the KV cache hold `tokens` again, from a state saved when it held them."""
        lc.llama_memory_seq_rm(self._mem, 0, -1, -1)
        self.tokens = []
        if len(tokens):
            if not lc.llama_state_seq_set_data(self._ctx, state, len(state), 0):
                raise EdgespecError(f"llama.cpp could not restore a saved KV cache into {self.path.name}")
            self.tokens = list(tokens)

    # ---------------------------------------------------------------- tokenizer
    # What pairing compares (edgespec.llama.pairing), the same names as a GGUF header's.
    @property
    def tokenizer_model(self) -> str | None:
        return self.metadata("tokenizer.ggml.model")

    @property
    def vocab_size(self) -> int:
        return self.n_vocab

    @property
    def bos(self) -> int:
        return int(lc.llama_vocab_bos(self.vocab_ptr))

    @property
    def eos(self) -> int:
        return int(lc.llama_vocab_eos(self.vocab_ptr))

    def token_text(self, token: int) -> bytes:
        """The vocabulary's stored text for a token id (as in the GGUF)."""
        return lc.llama_vocab_get_text(self.vocab_ptr, int(token)) or b""

    def is_eog(self, token: int) -> bool:
        return bool(lc.llama_vocab_is_eog(self.vocab_ptr, int(token)))

    @functools.cached_property
    def eog_tokens(self) -> list[int]:
        """Every end-of-generation token id (EOS, EOT, <|im_end|>, ...)."""
        return [t for t in range(self.n_vocab) if lc.llama_vocab_is_eog(self.vocab_ptr, t)]

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Text to token ids. add_special adds BOS when the model asks for it."""
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self.vocab_ptr, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self.vocab_ptr, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token adds to the output (control tokens add nothing)."""
        t = int(token)
        cached = self._pieces[t]
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = lc.llama_token_to_piece(self.vocab_ptr, t, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self.vocab_ptr, t, buf, -n, 0, False)
            cached = self._pieces[t] = buf.raw[:n]
        return cached

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    # ------------------------------------------------------------ chat template
    def chat_template(self) -> str | None:
        raw = lc.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8") if raw else None

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, template: str | None = None) -> str:
        """Render messages with a Jinja chat template: the GGUF's own unless one is given."""
        template = template or self.chat_template()
        if template is None:
            raise EdgespecError(f"{self.path.name} has no chat template", "use --raw to send the prompt as plain text")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        bos = self.token_text(self.bos).decode("utf-8", "replace") if self.bos >= 0 else ""
        eos = self.token_text(self.eos).decode("utf-8", "replace") if self.eos >= 0 else ""
        try:
            fmt = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos, add_generation_prompt=add_generation_prompt)
            return fmt(messages=messages).prompt
        except Exception as e:  # a template error is the model's problem, not a crash
            raise EdgespecError(f"the chat template of {self.path.name} failed: {e}", "use --raw") from e

    def tokenize_prompt(self, text: str) -> list[int]:
        """Tokenize a rendered prompt: special tokens parsed, BOS added unless the text already has it."""
        bos = self.bos
        toks = self.tokenize(text, add_special=True, parse_special=True)
        if len(toks) >= 2 and toks[0] == bos and toks[1] == bos:
            toks = toks[1:]  # the template wrote BOS itself
        return toks

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as text (None when the file lacks the key)."""
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_model_meta_val_str(self._model, key.encode(), buf, 256)
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def describe(self) -> str:
        """Architecture, parameter count and quantisation, e.g. "qwen2, 494M parameters, Q4_K - Medium".

        The count comes from the weights themselves (llama.cpp's own description rounds a 0.5B
        model up to "1B")."""
        desc = ctypes.create_string_buffer(256)
        lc.llama_model_desc(self._model, desc, 256)
        parts = desc.value.decode("utf-8", "replace").split(" ", 2)  # "<arch> <size> <file type>"
        size = self.metadata("general.size_label")  # what the model's makers call it, e.g. "0.5B"
        if not size:
            n = int(lc.llama_model_n_params(self._model))  # counts a separate output matrix too
            size = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"
        ftype = parts[2] if len(parts) == 3 else ""
        return f"{parts[0]}, {size} parameters" + (f", {ftype}" if ftype else "")
