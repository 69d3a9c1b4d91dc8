"""The `edgespec` command line: wiring only; each command lives in edgespec/commands/."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.markup import escape

from edgespec import __version__
from edgespec.commands import bench, calibrate, chat, models, run, serve
from edgespec.commands import plan as plan_cmd
from edgespec.commands.options import err
from edgespec.errors import EdgespecError

app = typer.Typer(
    help="Speculative decoding for local GGUF models: a small draft model proposes, the target checks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("run")(run.run)
app.command("chat")(chat.chat)
app.add_typer(models.app, name="models")
app.command("plan")(plan_cmd.plan)
app.command("calibrate")(calibrate.calibrate)
app.command("bench")(bench.bench)
app.command("serve")(serve.serve)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgespec {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


def main() -> None:
    """Console entry point: user errors become one line on stderr, never a traceback."""
    debug = bool(os.environ.get("EDGESPEC_DEBUG"))
    if sys.argv[1:2] == ["__cpu-probe"]:  # the packaged executable running its own CPU probe child
        from edgespec.machine import cpu_probe

        sys.exit(cpu_probe.main(sys.argv[2:]))
    try:
        app()
    except EdgespecError as e:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {escape(e.line())}", soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)
    except OSError as e:
        if debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        err.print(f"[bold red]error:[/] {escape(str(e.strerror or e) + where)}", soft_wrap=True)
        sys.exit(1)
    except Exception as e:  # a bug: still one line, with the way to the traceback
        if debug:
            raise
        err.print(f"[bold red]internal error:[/] {escape(type(e).__name__ + ': ' + str(e))} (set EDGESPEC_DEBUG=1 for the traceback)", soft_wrap=True)
        sys.exit(1)
