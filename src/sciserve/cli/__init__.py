"""The ``sciserve`` command line (also ``python -m sciserve``).

Exit codes: 0 success, 1 other error, 2 invalid input (bad manifest, archive,
reference or option), 3 not found, 4 conflict (e.g. an immutable version
published with other content), 5 integrity (checksum mismatch),
6 not permitted (untrusted code, read-only registry), 7 unavailable,
8 missing dependency or device, 9 not authenticated, 10 a re-run
(``evaluate --reproduce``) whose outputs differ beyond the tolerance.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import errors
from . import (
    _access,
    _alerts,
    _batch,
    _datasets,
    _evaluate,
    _jobs,
    _jobs_runner,
    _monitor,
    _namespace,
    _package,
    _policy,
    _registry,
    _schedules,
    _serve,
    _stream,
    _up,
)
from ._context import State, report_error

__all__ = ["app", "main"]

app = typer.Typer(
    name="sciserve",
    help="Publish, serve and run scientific ML models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option("--home", help="Data directory (env SCISERVE_HOME).", show_default=False),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="Registry database URL (env SCISERVE_DATABASE_URL)."),
    ] = None,
    store_url: Annotated[
        str | None,
        typer.Option("--store-url", help="Artifact store path or URL (env SCISERVE_STORE_URL)."),
    ] = None,
    read_only: Annotated[
        bool | None,
        typer.Option(
            "--read-only", help="Open the registry without writing (e.g. an export on CVMFS)."
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option("--server", help="Work against a remote sciserve server (env SCISERVE_URL)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    ctx.obj = State(
        home=str(home) if home else None,
        overrides={
            "database_url": database_url,
            "store_url": store_url,
            "read_only": read_only,
            "server_url": server,
        },
        json=json_output,
    )


_package.register(app)
_registry.register(app)
_datasets.register(app)
app.add_typer(_namespace.app, name="namespace")
_up.register(app)
_serve.register(app)
_access.register(app)
_alerts.register(app)
_stream.register(app)
_batch.register(app)
_jobs.register(app)
_jobs_runner.register(app)  # adds `runner` to the `jobs` group
_schedules.register(app)
_monitor.register(app)
_policy.register(app)
_evaluate.register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; domain errors become one line on stderr and an exit code."""
    as_json = "--json" in (argv if argv is not None else sys.argv[1:])
    try:
        # Without standalone mode click returns the code of a typer.Exit.
        rc = app(args=argv, prog_name="sciserve", standalone_mode=False)
    except errors.SciserveError as exc:
        return report_error(exc, as_json)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        return 130
    except typer.TyperException as exc:  # usage errors: unknown command, bad option
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        return int(getattr(exc, "exit_code", 2))
    return rc if isinstance(rc, int) else 0
