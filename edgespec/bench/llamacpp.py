"""`edgespec bench --compare llama-cpp`: the same prompts through llama.cpp's own llama-speculative-simple.

The binary gets the prompt rendered with the target's chat template (-f FILE), the same models,
context, threads and GPU layers, greedy sampling (--temp 0 --top-k 1) or the same sampler settings,
-n max-tokens and a fixed draft length k (minimum draft 0 and draft p-min 0, so it drafts exactly k
like the model-kN rows; --llama-cpp-args can override any of that: later flags win in llama.cpp).
It reports, on stderr:

    encoded  123 tokens in    0.812 seconds, speed:  151.478 t/s
    decoded   81 tokens in    4.104 seconds, speed:   19.737 t/s
    n_draft   = 4
    n_predict = 81
    n_drafted = 96
    n_accept  = 57

and the prompt followed by the generated text on stdout. Each run is a fresh process (it loads both
models), so only the timed sections it prints are compared, not its start-up.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgespec.core.kinds import Finish
from edgespec.errors import EdgespecError, UsageError

BINARY = "llama-speculative-simple"
RUN_TIMEOUT_S = 900

_ENC = re.compile(r"encoded\s+(\d+)\s+tokens\s+in\s+([0-9.]+)\s+seconds")
_DEC = re.compile(r"decoded\s+(\d+)\s+tokens\s+in\s+([0-9.]+)\s+seconds(?:,\s*speed:\s*([0-9.]+|inf|nan))?")
_COUNT = re.compile(r"\b(n_draft|n_predict|n_drafted|n_accept)\s*=\s*(-?\d+)")

# Flag names changed: llama.cpp as vendored by llama-cpp-python 0.3.36 only has --spec-draft-n-max and
# --spec-draft-n-min (the old --draft-max/--draft-min now fail); older builds only have the old ones.
NEW_FLAGS = {"n_max": "--spec-draft-n-max", "n_min": "--spec-draft-n-min", "p_min": "--spec-draft-p-min"}
OLD_FLAGS = {"n_max": "--draft-max", "n_min": "--draft-min", "p_min": "--draft-p-min"}


@dataclass
class SpecOutput:
    """What llama-speculative-simple printed."""

    encoded: int  # prompt tokens
    t_encode: float
    decoded: int  # generated tokens (including an end-of-generation token)
    t_decode: float
    n_draft: int | None = None
    n_drafted: int | None = None
    n_accept: int | None = None
    n_predict: int | None = None

    @property
    def decode_tps(self) -> float:
        return self.decoded / self.t_decode if self.t_decode > 0 else math.inf


def parse_output(text: str) -> SpecOutput:
    """Parse the timing and count lines (anywhere in the text, whatever log prefix they carry)."""
    enc, dec = _ENC.search(text), _DEC.search(text)
    if not dec:
        raise EdgespecError(f"could not find '{BINARY}' timings in its output (no 'decoded N tokens in X seconds' line)")
    counts = {k: int(v) for k, v in _COUNT.findall(text)}
    return SpecOutput(
        encoded=int(enc.group(1)) if enc else 0, t_encode=float(enc.group(2)) if enc else 0.0,
        decoded=int(dec.group(1)), t_decode=float(dec.group(2)),
        n_draft=counts.get("n_draft"), n_drafted=counts.get("n_drafted"), n_accept=counts.get("n_accept"),
        n_predict=counts.get("n_predict"),
    )


def generated_text(stdout: bytes, *echoes: bytes) -> bytes | None:
    """The reply's bytes: what follows the echoed prompt on stdout (the first of `echoes` found), or None.

    Bytes, not text: a token may end inside a UTF-8 character, and llama.cpp prints it as it is.
    """
    for echo in echoes:
        i = stdout.find(echo) if echo else -1
        if i >= 0:
            return stdout[i + len(echo):].rstrip(b"\n")
    return None


def special_pieces(model, tokens) -> list[bytes]:
    """Each token as llama.cpp's examples print it: special tokens as their text (<s>, <|im_start|>, ...)."""
    import ctypes

    import llama_cpp as lc

    out = []
    for t in tokens:
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_token_to_piece(model.vocab_ptr, int(t), buf, 256, 0, True)
        out.append(buf.raw[: max(n, 0)])
    return out


def prompt_echo(model, tokens) -> bytes:
    """What llama-speculative-simple prints for the prompt (for a SentencePiece vocabulary that is not the
    rendered text: spaces may print as U+2581)."""
    return b"".join(special_pieces(model, tokens))


# /proc/cpuinfo flag -> ggml's CMake option, for a build that names its instruction sets instead of
# compiling for the host (-march=native), which turns AMX on wherever the CPU reports it.
_CPU_OPTIONS = (("sse4_2", "GGML_SSE42"), ("avx", "GGML_AVX"), ("avx2", "GGML_AVX2"), ("fma", "GGML_FMA"),
                ("f16c", "GGML_F16C"), ("bmi2", "GGML_BMI2"), ("avx_vnni", "GGML_AVX_VNNI"),
                ("avx512f", "GGML_AVX512"), ("avx512vbmi", "GGML_AVX512_VBMI"),
                ("avx512_vnni", "GGML_AVX512_VNNI"), ("avx512_bf16", "GGML_AVX512_BF16"))


def cmake_cpu_args(flags: set[str], avoid_amx: bool) -> list[str]:
    """CMake options for building llama.cpp's tools so that they take the CPU paths edgespec takes.

    Where edgespec loads without AMX (the CPU reports it and llama.cpp's AMX kernels crash there, or
    --amx off), a native build would use them and die on its first batch: build for the CPU's other
    instruction sets, named one by one, instead. Elsewhere: nothing (the native build)."""
    if not avoid_amx:
        return []
    return ["-DGGML_NATIVE=OFF"] + [f"-D{opt}={'ON' if flag in flags else 'OFF'}" for flag, opt in _CPU_OPTIONS] \
        + ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]


def main(argv: list[str] | None = None) -> int:
    """`python -m edgespec.bench.llamacpp cmake-args`: the CMake options above for this machine, one
    line (scripts/build_llama_cpp_tools.sh); why, on stderr."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["cmake-args"]:
        print("usage: python -m edgespec.bench.llamacpp cmake-args", file=sys.stderr)
        return 2
    from edgespec.machine.cpu_paths import decide
    from edgespec.machine.system import cpu_flags

    decision = decide()
    out = cmake_cpu_args(cpu_flags(), decision.avoids_amx)
    if out:
        print(f"edgespec loads models without AMX here ({decision.reason}): building llama.cpp without it too",
              file=sys.stderr)
    print(" ".join(out))
    return 0


def find_binary(where: str | os.PathLike) -> Path:
    """`where` is the binary itself or a directory holding it (or holding bin/ with it)."""
    p = Path(where).expanduser()
    hint = "build it with scripts/build_llama_cpp_tools.sh DIR, or point --llama-cpp-bin at llama.cpp's build/bin"
    if not p.exists():
        raise UsageError(f"--llama-cpp-bin: {p} does not exist", hint)
    if p.is_file():
        if not os.access(p, os.X_OK):
            raise UsageError(f"--llama-cpp-bin: {p} is not executable")
        return p
    for d in (p, p / "bin"):
        for name in (BINARY, BINARY + ".exe"):
            c = d / name
            if c.is_file() and os.access(c, os.X_OK):
                return c
    raise UsageError(f"no {BINARY} in {p}", hint)


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower() or "failed" in ln.lower() or "invalid" in ln.lower():
            return ln
    return lines[-1] if lines else "no output"


def run_child(cmd: list[str], timeout: float) -> tuple[int, bytes, str, int | None]:
    """(exit code, stdout bytes, stderr text, the child's peak RSS in bytes where the OS reports it)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        rss = None
        try:
            if hasattr(os, "wait4"):
                deadline = time.monotonic() + timeout
                while True:
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        proc.returncode = os.waitstatus_to_exitcode(status)
                        rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
                        break
                    if time.monotonic() > deadline:
                        raise subprocess.TimeoutExpired(cmd, timeout)
                    time.sleep(0.01)
            else:  # pragma: no cover - Windows
                proc.wait(timeout)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
            raise
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read().decode("utf-8", "replace"), rss


@dataclass
class Load:
    """How edgespec loaded the pair, to be repeated on llama.cpp's command line."""

    n_ctx: int
    threads: int
    n_gpu_layers: int = 0
    draft_gpu_layers: int = 0
    n_batch: int | None = None
    type_k: str = "f16"
    type_v: str = "f16"
    use_mmap: bool = True
    use_mlock: bool = False

    @classmethod
    def of(cls, target, draft) -> "Load":
        """From the loaded models and the memory plan they were loaded with (runner.load_pair keeps it as .plan)."""
        plan = getattr(target, "plan", None)
        load = cls(n_ctx=target.n_ctx, threads=target.n_threads, n_gpu_layers=target.n_gpu_layers,
                   draft_gpu_layers=draft.n_gpu_layers if draft is not None else 0, n_batch=target.n_batch)
        if plan is not None:
            load.type_k, load.type_v = plan.type_k, plan.type_v
            load.use_mmap, load.use_mlock = plan.use_mmap, plan.use_mlock
        return load


class LlamaCpp:
    """Runs llama-speculative-simple for a bench mode row."""

    def __init__(self, binary: Path, load: Load, *, sampling=None, ignore_eos: bool = False, extra_args: str = "",
                 timeout: float = RUN_TIMEOUT_S):
        from edgespec.core.verify import SamplingParams

        self.binary = binary
        self.load = load
        self.sampling = sampling or SamplingParams()
        self.ignore_eos = ignore_eos
        try:
            self.extra = shlex.split(extra_args or "")
        except ValueError as e:
            raise UsageError(f"--llama-cpp-args: {e}") from None
        self.timeout = timeout
        self.spec_type: list[str] = []
        self.help = ""
        self.flags = self._detect_flags()
        self.last_command: list[str] = []

    def _detect_flags(self) -> dict[str, str]:
        try:
            rc, out, err, _ = run_child([str(self.binary), "--help"], 60)
        except OSError as e:
            raise EdgespecError(f"cannot run {self.binary}: {e.strerror or e}") from None
        except subprocess.TimeoutExpired:
            raise EdgespecError(f"{self.binary} --help did not finish in 60 s") from None
        text = self.help = out.decode("utf-8", "replace") + err
        # Builds with --spec-type need it spelled out: without it a plain draft model is not used at all.
        self.spec_type = ["--spec-type", "draft-simple"] if "--spec-type" in text and "draft-simple" in text else []
        return NEW_FLAGS if NEW_FLAGS["n_max"] in text else OLD_FLAGS

    def version(self) -> str | None:
        try:
            rc, out, err, _ = run_child([str(self.binary), "--version"], 60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        m = re.search(r"version:\s*(.+)", out.decode("utf-8", "replace") + err)
        return m.group(1).strip() if m else None

    def command(self, target: str, draft: str | None, prompt_file: str, k: int | None, max_tokens: int, seed: int,
                spec: str = "draft-simple", n_prompt: int = 0) -> list[str]:
        """The command line for one prompt: the draft model at draft length k (spec draft-simple), or
        llama.cpp's own context drafting (ngram-mod, ngram-map-k) at its defaults."""
        sp, ld = self.sampling, self.load
        gpu = lambda n: str(999 if n < 0 else n)  # noqa: E731  (edgespec's -1 means all layers)
        cmd = [str(self.binary), "-m", target, "-f", prompt_file, "-n", str(max_tokens), "-c", str(ld.n_ctx),
               "-t", str(ld.threads), "-ngl", gpu(ld.n_gpu_layers), "-s", str(seed)]
        if "--no-escape" in self.help:  # it turns a prompt's \n, \t, \" ... into the characters by default
            cmd.append("--no-escape")
        if spec == "draft-simple":
            cmd += ["-md", draft, "-td", str(ld.threads), "-ngld", gpu(ld.draft_gpu_layers), *self.spec_type,
                    self.flags["n_max"], str(k), self.flags["n_min"], "0", self.flags["p_min"], "0"]
        else:
            if "--spec-type" not in self.help or spec not in self.help:
                raise UsageError(f"{self.binary.name} has no --spec-type {spec}", "build it from a llama.cpp that has it (scripts/build_llama_cpp_tools.sh)")
            cmd += ["--spec-type", spec]
        if ld.n_batch:  # it decodes the whole prompt in one batch: -b must hold it (-ub stays edgespec's)
            cmd += ["-b", str(max(ld.n_batch, n_prompt + 8)), "-ub", str(ld.n_batch)]
        if (ld.type_k, ld.type_v) != ("f16", "f16"):  # the memory planner chose a quantised KV cache
            cmd += ["-ctk", ld.type_k, "-ctv", ld.type_v]
            if "--cache-type-k-draft" in self.help:
                cmd += ["-ctkd", ld.type_k, "-ctvd", ld.type_v]
            if ld.type_v != "f16":  # a quantised V cache needs flash attention
                cmd += ["-fa", "on"] if "[on|off|auto]" in self.help else ["-fa"]
        if not ld.use_mmap:
            cmd.append("--no-mmap")
        if ld.use_mlock:
            cmd.append("--mlock")
        if sp.greedy:
            cmd += ["--temp", "0", "--top-k", "1"]
        else:
            cmd += ["--temp", str(sp.temperature), "--top-k", str(sp.top_k), "--top-p", str(sp.top_p), "--min-p", str(sp.min_p)]
        if self.ignore_eos:
            cmd.append("--ignore-eos")
        return cmd + self.extra

    def run(self, run, target, draft, prompt, tokens: list[int], max_tokens: int, seed: int, spec: str = "draft-simple") -> None:
        """Fill `run` (an edgespec.bench.runs.Run) from one llama-speculative-simple process."""
        from edgespec.session.loading import render

        rendered = render(target, prompt.messages())  # the text edgespec's own modes tokenize
        fd, path = tempfile.mkstemp(prefix="edgespec-bench-", suffix=".txt")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                f.write(rendered + "\n")  # llama.cpp's -f drops one trailing newline; the template's own stays
            cmd = self.command(str(target.path), str(draft.path) if draft is not None else None, path, run.k, max_tokens, seed,
                               spec, n_prompt=len(tokens))
            self.last_command = cmd
            t0 = time.perf_counter()
            try:
                rc, out, err, rss = run_child(cmd, self.timeout)
            except subprocess.TimeoutExpired:
                raise EdgespecError(f"{BINARY} did not finish in {self.timeout:.0f} s on prompt {prompt.id!r}") from None
            wall = time.perf_counter() - t0
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
        if rc != 0:
            hint = "run it by hand with EDGESPEC_DEBUG=1 to see the command, or adjust --llama-cpp-args"
            if rc in (-signal.SIGILL, 128 + signal.SIGILL):
                hint = ("an illegal instruction: a build for another CPU, or llama.cpp's AMX kernels on a CPU where "
                        "they crash; rebuild with scripts/build_llama_cpp_tools.sh (it leaves AMX out where edgespec does)")
            raise EdgespecError(f"{BINARY} failed (exit code {rc}) on prompt {prompt.id!r}: {_last_error_line(err + out.decode('utf-8', 'replace'))}",
                                hint)
        got = parse_output(err + "\n" + out.decode("utf-8", "replace"))
        s = run.stats  # what its report says; it prints no per-step detail (run.per_step is False)
        s.prompt_tokens = got.encoded or len(tokens)
        s.prefill_tokens = max(0, s.prompt_tokens - 1)  # it decodes all but the last prompt token up front
        s.t_prefill, s.t_decode = got.t_encode, got.t_decode
        s.generated = got.decoded
        s.drafted, s.accepted = got.n_drafted or 0, got.n_accept or 0
        run.wall_s = wall
        run.peak_rss = rss
        run.finish = Finish.LENGTH if got.decoded >= max_tokens else Finish.STOP
        run.raw = generated_text(out, prompt_echo(target, tokens), rendered.encode("utf-8"))
        run.text = None if run.raw is None else run.raw.decode("utf-8", "replace")
        run.tokens = None  # compared with plain decoding by bytes (edgespec.bench.text_divergence)


if __name__ == "__main__":
    sys.exit(main())
