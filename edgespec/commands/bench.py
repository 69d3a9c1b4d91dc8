"""`edgespec bench`: what speculation buys on this machine, mode by mode, on a prompt suite."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console

from edgespec.bench.matching import NEAR_TIE
from edgespec.commands.options import K_MAX, LOADING, MODELS, SAMPLER, check_writable, close, err, load_models, takes
from edgespec.errors import UsageError


@takes(MODELS, K_MAX, SAMPLER, LOADING)
def bench(
    suite: Annotated[str, typer.Option(
        "--suite", metavar="NAME",
        help="A shipped suite: short (25 short tasks, 64-token answers) or edit (copy-heavy: whole-file edits, quotes, conversions, follow-up turns; 200-800-token answers).",
    )] = "short",
    prompts: Annotated[Optional[Path], typer.Option(
        "--prompts", metavar="FILE", show_default=False,
        help='Your own suite instead, JSONL: one {"id", "category", "prompt", optional "system", "max_tokens", "turns"} per line.',
    )] = None,
    category: Annotated[Optional[List[str]], typer.Option(
        "--category", metavar="NAME", show_default=False,
        help="Only prompts of this category (repeatable). short: codegen, edit, chat, extract, json; edit: file-edit, quote, convert, follow-up.",
    )] = None,
    modes: Annotated[Optional[List[str]], typer.Option(
        "--modes", metavar="MODES", show_default=False,
        help="Modes, comma-separated or repeated: plain, model-kN, model (k chosen per step), ngram, ngram-kN, auto, "
             "llama.cpp-spec, llama.cpp-spec-kN, llama.cpp-ngram-mod, llama.cpp-ngram-map-k (these need --llama-cpp-bin). plain is always run (added first if missing) "
             "(default: plain,model-k2,model-k4,model-k6,ngram,auto).",
    )] = None,
    repeats: Annotated[Optional[int], typer.Option("--repeats", "-r", min=1, show_default=False, help="Measured passes over the suite (default: 1).")] = None,
    warmup: Annotated[bool, typer.Option("--warmup/--no-warmup", help="First an untimed pass: the shortest prompt, 8 tokens, every mode.")] = True,
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", "-n", min=1, show_default=False,
        help="Most tokens per reply, for every prompt (default: each prompt's own max_tokens, else 64).",
    )] = None,
    quick: Annotated[bool, typer.Option("--quick", help="3 prompts (codegen, edit, extract), one repeat, 64 tokens.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (each prompt and repeat gets seed + 1000 x repeat + index, the same in every mode).")] = 0,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Always generate --max-tokens tokens.")] = False,
    lockstep: Annotated[bool, typer.Option("--lockstep", help="Run the edgespec modes of each prompt side by side, one step each in turn, each with its own KV cache: machine noise then hits every mode alike (tighter speed-ups on a shared or throttling machine; a little more memory).")] = False,
    near_tie: Annotated[float, typer.Option("--near-tie", min=0.0, help="Top-2 logit margin below which a greedy divergence from plain counts as a near-tie.")] = NEAR_TIE,
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE", show_default=False, help="Write every number, the machine, versions and model hashes as JSON ('-': stdout; the tables then go to stderr).")] = None,
    csv_out: Annotated[Optional[str], typer.Option("--csv", metavar="FILE", show_default=False, help="Write one CSV row per run (with the machine, versions and models on each row).")] = None,
    plot_out: Annotated[Optional[str], typer.Option("--plot", metavar="FILE.png", show_default=False, help="Draw speedup per category and mode (needs matplotlib: install the plot extra, or pip install matplotlib).")] = None,
    details: Annotated[bool, typer.Option("--details", help="Also print a row per prompt and mode.")] = False,
    compare: Annotated[Optional[str], typer.Option("--compare", metavar="llama-cpp", show_default=False, help="Also run llama.cpp's own llama-speculative-simple on the same prompts, models and k (row llama.cpp-spec-kN).")] = None,
    llama_cpp_bin: Annotated[Optional[str], typer.Option("--llama-cpp-bin", metavar="DIR", show_default=False, help="Directory with llama-speculative-simple (or the binary itself); scripts/build_llama_cpp_tools.sh builds it.")] = None,
    llama_cpp_k: Annotated[Optional[int], typer.Option("--llama-cpp-k", min=1, max=64, show_default=False, help="Draft length for llama.cpp-spec (default: the pair's k, else 4).")] = None,
    llama_cpp_args: Annotated[Optional[str], typer.Option("--llama-cpp-args", show_default=False, help="Extra arguments for llama-speculative-simple, appended last (they win), e.g. \"--spec-draft-p-min 0.75\".")] = None,
    *, models, k_max, sampling, load,
) -> None:
    """Benchmark plain decoding against speculative modes on a prompt suite, side by side.

    Order: for each repeat r (0-based), for each prompt in suite order, every mode in turn, starting at mode r mod M (M modes, in --modes order) and wrapping around; with one repeat, every prompt runs the modes in --modes order. Every run starts with empty KV caches and a fresh controller; the JSON records the executed order (run_order).

    Speedup is decode tokens/s over plain decoding of the same prompt and repeat; categories and the total are geometric means over prompts, with min-max. Greedy outputs are compared with plain decoding: exact, near-tie (the first differing token has a target top-2 logit margin below --near-tie) or MISMATCH.

    The defaults (25 prompts x 6 modes, 64 tokens, 1 repeat) took 12.4 minutes with the default pair on a 2-core x86 CPU (80 tokens took 15); --suite edit with plain, ngram, auto and llama.cpp's two n-gram modes, --lockstep, took 1 h 49 min on a 2-core AMD EPYC; --suite edit --modes plain,auto --lockstep --repeats 3 took 1 h 53 min on a 2-core Intel Xeon.
    """
    from edgespec.bench import llamacpp as L
    from edgespec.bench import modes as M
    from edgespec.bench import report as R
    from edgespec.bench import runs as B
    from edgespec.bench import suite as S
    from edgespec.bench import tables as T
    from edgespec.machine import system

    load_at_start = system.loadavg()  # before this process adds its own load
    # Everything that can be checked without the models is checked first.
    if compare is not None and compare != "llama-cpp":
        raise UsageError(f"--compare takes llama-cpp, got {compare!r}")
    prompt_set = S.select(S.load_suite(prompts, suite), category or (), quick)
    k_pair = llama_cpp_k or models.resolved.k or 4
    mode_list = M.parse_modes(modes or list(M.DEFAULT_MODES), k_pair)
    if compare and not any(m.external for m in mode_list):
        mode_list.append(M.parse_mode("llama.cpp-spec", k_pair))
    binary = None
    if any(m.external for m in mode_list):
        if llama_cpp_bin is None:
            raise UsageError("comparing with llama.cpp needs --llama-cpp-bin DIR (the directory with llama-speculative-simple)",
                             "scripts/build_llama_cpp_tools.sh DIR builds it")
        binary = L.find_binary(llama_cpp_bin)
    if not models.has_draft and any(m.needs_draft for m in mode_list):
        needs = ", ".join(m.name for m in mode_list if m.needs_draft)
        raise UsageError(f"modes {needs} need a draft model", "pass --draft or --pair, or --modes plain,ngram,auto")
    if plot_out:
        R.check_plot_available()
    for opt, path in (("--json", json_out), ("--csv", csv_out), ("--plot", plot_out)):
        check_writable(opt, path)
    if csv_out == "-" or plot_out == "-":
        raise UsageError("only --json can write to stdout ('-')")
    settings = B.Settings(
        max_tokens=max_tokens, repeats=repeats or 1, warmup=warmup, seed=seed, ignore_eos=ignore_eos,
        k_max=k_max, near_tie=near_tie, lockstep=lockstep, sampling=sampling.params,
    )

    tmodel, dmodel = load_models(models, load)
    try:
        llama_cpp = None
        if binary is not None:
            llama_cpp = L.LlamaCpp(binary, L.Load.of(tmodel, dmodel), sampling=settings.sampling, ignore_eos=ignore_eos,
                                   extra_args=llama_cpp_args or "")
        b = B.Bench(tmodel, dmodel, prompt_set, mode_list, settings, llama_cpp=llama_cpp)
        with err.status("preparing", spinner="dots") as status:
            calibration = b.prepare(on_calibrate=lambda: status.update("measuring this machine's costs (once per pair and setting)"))
            status.update("warm-up")
            warm = b.warm_up()
        try:
            result = _run_with_progress(b)
        finally:
            b.close()  # lockstep twins, before the models they share
        result.calibration, result.warmup = calibration, warm
        result.loadavg = {"command_start": load_at_start, **(result.loadavg or {})}
        with err.status("describing the machine and models", spinner="dots"):
            described = R.describe(tmodel, dmodel, models.resolved, load, llama_cpp)
    finally:
        close(tmodel, dmodel)

    extra = {"suite": None if prompts else suite, "prompts_file": str(prompts) if prompts else None,
             "categories": list(category or []), "quick": quick,
             **described["settings"]}
    doc = R.document(result, machine=described["machine"], models=described["models"], extra=extra)
    if json_out:
        R.write_json(doc, json_out)
    if csv_out:
        R.write_csv(doc, csv_out)
    if plot_out:
        R.write_plot(doc, plot_out)
    out = err if json_out == "-" else Console(width=None if Console().is_terminal else 160)
    for t in T.tables(doc, details=details):
        out.print(t)
    err.print(f"[dim]{T.footnote(doc)}[/]")
    written = [p for p in (json_out, csv_out, plot_out) if p and p != "-"]
    if written:
        err.print(f"[dim]wrote {', '.join(written)}[/]")
    mismatches = sum(e["matches"]["MISMATCH"] for e in doc["summary"]["modes"])
    if mismatches:
        err.print(f"[bold red]warning:[/] {mismatches} greedy run(s) differ from plain decoding at a token that is not a near-tie")
    unread = sorted({r["prompt"] for r in doc["runs"] if r["mode"].startswith("llama.cpp") and r.get("text") is None})
    if unread:
        err.print(f"[yellow]warning:[/] llama.cpp's output did not echo the prompt it was given on {', '.join(unread)}: "
                  "its reply there is not compared with plain decoding")
    if result.interrupted:
        err.print(f"[yellow]interrupted[/]: the results above cover {len(result.runs)} completed runs")
        raise typer.Exit(130)


def _run_with_progress(b):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("benchmark", total=None)

        def progress(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        return b.run(progress)
