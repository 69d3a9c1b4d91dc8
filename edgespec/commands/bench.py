"""`edgespec bench`: what speculation buys on this machine, mode by mode, on a prompt suite."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console

from edgespec.commands.options import (
    AmxOpt,
    TopKOpt, TopPOpt, MinPOpt, sampling_params,
    BudgetOpt, CtxOpt, DraftNglOpt, DraftOpt, KMaxOpt, KvTypeOpt, NglOpt, PairOpt, SourceOpt, TargetOpt, ThreadsOpt,
    YesOpt, err, load_models,
)
from edgespec.errors import UsageError


def bench(
    pair: PairOpt = None,
    target: TargetOpt = None,
    draft: DraftOpt = None,
    yes: YesOpt = False,
    source: SourceOpt = "auto",
    prompts: Annotated[Optional[Path], typer.Option(
        "--prompts", metavar="FILE", show_default=False,
        help='Your own suite, JSONL: one {"id", "category", "prompt", optional "system", "max_tokens"} per line (default: the shipped suite, 25 prompts).',
    )] = None,
    category: Annotated[Optional[List[str]], typer.Option(
        "--category", metavar="NAME", show_default=False, help="Only prompts of this category (repeatable): codegen, edit, chat, extract, json.",
    )] = None,
    modes: Annotated[Optional[List[str]], typer.Option(
        "--modes", metavar="MODES", show_default=False,
        help="Modes, comma-separated or repeated: plain, model-kN, model (k chosen per step), ngram, ngram-kN, auto, "
             "llama.cpp-spec, llama.cpp-spec-kN. plain is always run (added first if missing) "
             "(default: plain,model-k2,model-k4,model-k6,ngram,auto).",
    )] = None,
    repeats: Annotated[Optional[int], typer.Option("--repeats", "-r", min=1, show_default=False, help="Measured passes over the suite (default: 1).")] = None,
    warmup: Annotated[bool, typer.Option("--warmup/--no-warmup", help="First an untimed pass: the shortest prompt, 8 tokens, every mode.")] = True,
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", "-n", min=1, show_default=False,
        help="Most tokens per reply; a prompt's own max_tokens can lower it (default: 64).",
    )] = None,
    quick: Annotated[bool, typer.Option("--quick", help="3 prompts (codegen, edit, extract), one repeat, 64 tokens.")] = False,
    temp: Annotated[float, typer.Option("--temp", help="Temperature; 0 is greedy and checks every output against plain decoding.")] = 0.0,
    top_k: TopKOpt = 40,
    top_p: TopPOpt = 0.95,
    min_p: MinPOpt = 0.05,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (each prompt and repeat gets seed + 1000 x repeat + index, the same in every mode).")] = 0,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Always generate --max-tokens tokens.")] = False,
    k_max: KMaxOpt = 16,
    lockstep: Annotated[bool, typer.Option("--lockstep", help="Run the edgespec modes of each prompt side by side, one step each in turn, each with its own KV cache: machine noise then hits every mode alike (tighter speed-ups on a shared or throttling machine; a little more memory).")] = False,
    near_tie: Annotated[float, typer.Option("--near-tie", min=0.0, help="Top-2 logit margin below which a greedy divergence from plain counts as a near-tie.")] = 0.5,
    ctx: CtxOpt = None,
    kv_type: KvTypeOpt = None,
    budget: BudgetOpt = None,
    threads: ThreadsOpt = None,
    n_gpu_layers: NglOpt = None,
    draft_gpu_layers: DraftNglOpt = None,
    amx: AmxOpt = None,
    json_out: Annotated[Optional[str], typer.Option("--json", metavar="FILE", show_default=False, help="Write every number, the machine, versions and model hashes as JSON ('-': stdout; the tables then go to stderr).")] = None,
    csv_out: Annotated[Optional[str], typer.Option("--csv", metavar="FILE", show_default=False, help="Write one CSV row per run (with the machine, versions and models on each row).")] = None,
    plot_out: Annotated[Optional[str], typer.Option("--plot", metavar="FILE.png", show_default=False, help="Draw speedup per category and mode (needs matplotlib: install the plot extra, or pip install matplotlib).")] = None,
    details: Annotated[bool, typer.Option("--details", help="Also print a row per prompt and mode.")] = False,
    compare: Annotated[Optional[str], typer.Option("--compare", metavar="llama-cpp", show_default=False, help="Also run llama.cpp's own llama-speculative-simple on the same prompts, models and k (row llama.cpp-spec-kN).")] = None,
    llama_cpp_bin: Annotated[Optional[str], typer.Option("--llama-cpp-bin", metavar="DIR", show_default=False, help="Directory with llama-speculative-simple (or the binary itself); scripts/build_llama_cpp_tools.sh builds it.")] = None,
    llama_cpp_k: Annotated[Optional[int], typer.Option("--llama-cpp-k", min=1, max=64, show_default=False, help="Draft length for llama.cpp-spec (default: the pair's k, else 4).")] = None,
    llama_cpp_args: Annotated[Optional[str], typer.Option("--llama-cpp-args", show_default=False, help="Extra arguments for llama-speculative-simple, appended last (they win), e.g. \"--spec-draft-p-min 0.75\".")] = None,
) -> None:
    """Benchmark plain decoding against speculative modes on a prompt suite, side by side.

    Order: for each repeat r (0-based), for each prompt in suite order, every mode in turn, starting at mode r mod M (M modes, in --modes order) and wrapping around; with one repeat, every prompt runs the modes in --modes order. Every run starts with empty KV caches and a fresh controller; the JSON records the executed order (run_order).

    Speedup is decode tokens/s over plain decoding of the same prompt and repeat; categories and the total are geometric means over prompts, with min-max. Greedy outputs are compared with plain decoding: exact, near-tie (the first differing token has a target top-2 logit margin below --near-tie) or MISMATCH.

    The defaults (25 prompts x 6 modes, 64 tokens, 1 repeat) took 12.4 minutes with the default pair on a 2-core x86 CPU (80 tokens took 15).
    """
    from edgespec.bench import runs as B
    from edgespec.bench import llamacpp as L
    from edgespec.bench import report as R
    from edgespec.models import registry
    from edgespec.session import runner

    load_at_start = B.loadavg()  # before this process adds its own load
    # Everything that can be checked without the models is checked first.
    if compare is not None and compare != "llama-cpp":
        raise UsageError(f"--compare takes llama-cpp, got {compare!r}")
    if temp < 0:
        raise UsageError(f"--temp must be >= 0, got {temp}")
    suite = B.select(B.load_suite(prompts), category or (), quick)
    models = registry.resolve(registry.load_registry(), pair, target, draft)
    mode_list = B.parse_modes(modes or list(B.DEFAULT_MODES), llama_cpp_k or models.k or 4)
    if compare and not any(m.external for m in mode_list):
        mode_list.append(B.parse_mode("llama.cpp-spec", llama_cpp_k or models.k or 4))
    binary = None
    if any(m.external for m in mode_list):
        if llama_cpp_bin is None:
            raise UsageError("comparing with llama.cpp needs --llama-cpp-bin DIR (the directory with llama-speculative-simple)",
                             "scripts/build_llama_cpp_tools.sh DIR builds it")
        binary = L.find_binary(llama_cpp_bin)
    if models.draft is None and any(m.needs_draft for m in mode_list):
        needs = ", ".join(m.name for m in mode_list if m.needs_draft)
        raise UsageError(f"modes {needs} need a draft model", "pass --draft or --pair, or --modes plain,ngram,auto")
    if plot_out:
        R.check_plot_available()
    for opt, path in (("--json", json_out), ("--csv", csv_out), ("--plot", plot_out)):
        if path and path != "-" and not Path(path).expanduser().resolve().parent.is_dir():
            raise UsageError(f"{opt} {path}: the directory {Path(path).expanduser().resolve().parent} does not exist")
    if csv_out == "-" or plot_out == "-":
        raise UsageError("only --json can write to stdout ('-')")

    settings = B.Settings(
        max_tokens=max_tokens or (B.QUICK_MAX_TOKENS if quick else B.DEFAULT_MAX_TOKENS),
        repeats=repeats or 1, warmup=warmup, seed=seed, ignore_eos=ignore_eos, k_max=k_max, near_tie=near_tie, lockstep=lockstep,
        sampling=sampling_params(temp, top_k, top_p, min_p),
    )
    load = runner.LoadOptions(n_ctx=ctx, n_threads=threads, n_gpu_layers=n_gpu_layers, draft_gpu_layers=draft_gpu_layers,
                              kv_type=kv_type, budget=budget, amx=amx)
    tmodel, dmodel = load_models(models, load, yes=yes, source=source)
    try:
        llama_cpp = None
        if binary is not None:
            llama_cpp = L.LlamaCpp(binary, L.Load.of(tmodel, dmodel), sampling=settings.sampling, ignore_eos=ignore_eos,
                                   extra_args=llama_cpp_args or "")
        b = B.Bench(tmodel, dmodel, suite, mode_list, settings, llama_cpp=llama_cpp)
        with err.status("preparing", spinner="dots") as status:
            calibration = b.prepare(on_calibrate=lambda: status.update("measuring this machine's costs (once per pair and setting)"))
            if settings.warmup:
                status.update("warm-up")
                warm = b.warm_up()
            else:
                warm = None
        try:
            result = _run_with_progress(b)
        finally:
            b.close()  # lockstep twins, before the models they share
        result.calibration, result.warmup = calibration, warm
        result.loadavg = {"command_start": load_at_start, **(result.loadavg or {})}
        with err.status("describing the machine and models", spinner="dots"):
            machine = R.machine_info()
            from edgespec.machine import cpu_paths

            machine["cpu_paths"] = cpu_paths.report(cpu_paths.decide(amx), (tmodel, dmodel))
            model_docs = {"target": R.model_info(models.target), "draft": R.model_info(models.draft) if dmodel is not None else None}
        plan = getattr(tmodel, "plan", None)
        extra = {
            "prompts_file": str(prompts) if prompts else None, "categories": list(category or []), "quick": quick,
            "ctx": tmodel.n_ctx, "threads": tmodel.n_threads, "n_batch": tmodel.n_batch,
            "n_gpu_layers": tmodel.n_gpu_layers, "draft_gpu_layers": dmodel.n_gpu_layers if dmodel is not None else None,
            "kv_type": [plan.type_k, plan.type_v] if plan is not None else None,
            "use_mmap": plan.use_mmap if plan is not None else None, "use_mlock": plan.use_mlock if plan is not None else None,
        }
        if llama_cpp is not None:
            extra["llama_cpp"] = {"binary": str(binary), "version": llama_cpp.version(), "extra_args": llama_cpp_args,
                                  "last_command": llama_cpp.last_command}
    finally:
        tmodel.close()
        if dmodel is not None:
            dmodel.close()

    doc = R.document(result, machine=machine, models=model_docs, extra=extra)
    if json_out:
        R.write_json(doc, json_out)
    if csv_out:
        R.write_csv(doc, csv_out)
    if plot_out:
        R.write_plot(doc, plot_out)
    out = err if json_out == "-" else Console(width=None if Console().is_terminal else 160)
    for t in R.tables(doc, details=details):
        out.print(t)
    err.print(f"[dim]{R.footnote(doc)}[/]")
    written = [p for p in (json_out, csv_out, plot_out) if p and p != "-"]
    if written:
        err.print(f"[dim]wrote {', '.join(written)}[/]")
    mismatches = sum(e["matches"]["MISMATCH"] for e in doc["summary"]["modes"])
    if mismatches:
        err.print(f"[bold red]warning:[/] {mismatches} greedy run(s) differ from plain decoding at a token that is not a near-tie")
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
