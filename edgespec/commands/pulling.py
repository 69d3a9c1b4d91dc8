"""Pulling registry models with a progress bar (on stderr), after asking the user."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from edgespec.errors import EdgespecError
from edgespec.models.registry import ModelEntry
from edgespec.models.download import ensure_model


def _size(entry: ModelEntry) -> str:
    return f"{entry.size / 1e9:.2f} GB" if entry.size else "unknown size"


def confirm_and_pull(missing: tuple[ModelEntry, ...], *, yes: bool, source: str, console: Console) -> None:
    """Pull `missing` models; asks first on a terminal, needs --yes otherwise."""
    if not missing:
        return
    listing = ", ".join(f"{e.name} ({_size(e)})" for e in missing)
    if not yes:
        if not sys.stdin.isatty():
            raise EdgespecError(f"not downloaded yet: {listing}", "pass --yes to download, or run `edgespec models pull NAME`")
        import typer

        if not typer.confirm(f"Download {listing}?", default=True, err=True):
            raise EdgespecError("download declined", "pass a local model with --target")
    for entry in missing:
        pull(entry, source=source, console=console)


def pull(entry: ModelEntry, *, source: str, console: Console, endpoint: str | None = None):
    """Download one model with a Rich progress bar (download, then sha256 check) on `console`."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"pulling {entry.name}", total=entry.size)
        check = None

        def on_download(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        def on_verify(done: int, total: int) -> None:
            nonlocal check
            if check is None:
                bar.update(task, visible=False)
                check = bar.add_task(f"checking {entry.name} (sha256)", total=total)
            bar.update(check, completed=done, total=total)

        def notify(line: str) -> None:
            console.print(f"[yellow]{escape(line)}[/]", soft_wrap=True)

        path = ensure_model(entry, source=source, progress=on_download, verify_progress=on_verify, notify=notify, endpoint=endpoint)
    verified = "size and sha256 verified" if entry.sha256 else "size verified" if entry.size else "no checksum known"
    if not entry.sha256:
        from edgespec.models.cache import read_meta

        if read_meta(path).get("sha256"):
            verified = "sha256 verified against the Hub's record"
    console.print(f"[green]pulled[/] {escape(entry.name)} -> {escape(str(path))} ({verified})", soft_wrap=True)
    return path
