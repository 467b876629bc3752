"""Shared CLI state, output helpers and the one error → exit-code table."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column, Table
from rich.text import Text

from .. import errors
from ..config import Settings
from ..registry.registry import Registry
from ..registry.remote import RemoteRegistry

#: Exit codes, one per error family; documented in ``sciserve --help``.
EXIT_CODES: list[tuple[type[errors.SciserveError], int]] = [
    (errors.InvalidInput, 2),
    (errors.NotFound, 3),
    (errors.Conflict, 4),
    (errors.IntegrityError, 5),
    (errors.PermissionDenied, 6),
    (errors.ReadOnlyRegistry, 6),
    (errors.Unavailable, 7),
    (errors.RateLimited, 7),
    (errors.Unauthenticated, 9),
    (errors.DependencyMissing, 8),
    (errors.DeviceUnavailable, 8),
    (errors.SciserveError, 1),
]

T = TypeVar("T")


def local_actor() -> str:
    """Who runs this command, for the audit trail of local changes: ``local:<os user>``
    (from the OS, not from the environment, which anyone can set)."""
    try:
        return f"local:{pwd.getpwuid(os.getuid()).pw_name}"
    except KeyError:
        return f"local:uid={os.getuid()}"


@dataclass
class State:
    """What the top-level options decided, handed to every command."""

    home: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    json: bool = False
    console: Console = field(default_factory=lambda: Console(highlight=False))
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))

    @property
    def settings(self) -> Settings:
        return Settings.load(self.home, **self.overrides)

    @contextlib.contextmanager
    def registry(self, *, create: bool = True) -> Iterator[Registry | RemoteRegistry]:
        """The registry: a remote server's (``--server`` / ``SCISERVE_URL``) or the local one.

        Commands that only read pass ``create=False``: a local registry that
        does not exist is then reported, not created empty.
        """
        settings = self.settings
        if settings.server_url:
            with RemoteRegistry(
                settings.server_url,
                cache_dir=settings.package_cache,
                headers=settings.auth_headers(),
            ) as remote:
                yield remote
            return
        with Registry(settings, create=create) as reg:
            yield reg

    @contextlib.contextmanager
    def local_registry(self, *, create: bool = True) -> Iterator[Registry]:
        """The local registry, for commands that need direct access (admin, serve)."""
        settings = self.settings
        if settings.server_url:
            raise errors.InvalidInput(
                "this command works on the registry directly; run it where the registry is, "
                "without --server / SCISERVE_URL"
            )
        with Registry(settings, create=create) as reg:
            yield reg

    def emit(self, data: Any, human: Callable[[], None]) -> None:
        """Print ``data`` as JSON with ``--json``, else call ``human``."""
        if self.json:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        else:
            human()

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A byte progress bar on stderr (silent for --json or non-terminals)."""
        if self.json or not self.err.is_terminal or not total:
            yield lambda n: None
            return
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.err,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)


#: :func:`folding_table` narrows no column below this many characters.
_NARROWEST = 6


def _words(cell: str | Text) -> list[str]:
    return (cell.plain if isinstance(cell, Text) else cell).split() or [""]


def folding_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str | Text]],
    *,
    width: int,
    fixed: Collection[str] = (),
) -> Table:
    """A table of at most ``width`` characters that keeps every character of every cell.

    Cells wrap, and words longer than their column fold onto the next line,
    rather than being cut with an ellipsis (rich's default).  Columns are
    as wide as their content until the table would be too wide; then the
    widest column not in ``fixed`` (short values such as ids, dates and
    numbers, best kept whole) gives way first.  Rich's own narrowing cannot
    be trusted with this: it crops what does not fit.
    """
    rows = [list(row) for row in rows]

    def lines(cell: str | Text) -> list[str]:
        return (cell.plain if isinstance(cell, Text) else cell).splitlines() or [""]

    widths = [
        max(len(line) for line in [header, *(ln for row in rows for ln in lines(row[i]))])
        for i, header in enumerate(headers)
    ]
    # The longest word of each column: narrower, and it must fold.
    words = [
        max(len(word) for word in [header, *(w for row in rows for w in _words(row[i]))])
        for i, header in enumerate(headers)
    ]
    flexible = [i for i, h in enumerate(headers) if h not in fixed]
    # Columns are two spaces apart (collapsed padding, no rules).
    room = width - 2 * (len(headers) - 1)
    # Narrow the widest column first: flexible ones while they only wrap
    # between words, then folding them, then, if need be, the fixed ones.
    for group, floor in (
        (flexible, words),
        (flexible, [_NARROWEST] * len(headers)),
        (range(len(headers)), [_NARROWEST] * len(headers)),
    ):
        candidates = [i for i in group if widths[i] > floor[i]]
        while sum(widths) > room and candidates:
            widest = max(candidates, key=lambda i: widths[i])
            widths[widest] -= 1
            candidates = [i for i in candidates if widths[i] > floor[i]]
    columns = [Column(h, overflow="fold", width=w) for h, w in zip(headers, widths, strict=True)]
    table = Table(
        *columns, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True
    )
    for row in rows:
        table.add_row(*row)
    return table


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj


def log_to_stderr() -> None:
    """Log at INFO to stderr, for the long-running commands (serve, stream run)."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic announces each of its plugins at INFO whenever the registry
    # opens; only its warnings concern an operator.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def exit_code_for(exc: errors.SciserveError) -> int:
    return next(code for cls, code in EXIT_CODES if isinstance(exc, cls))


def report_error(exc: errors.SciserveError, as_json: bool) -> int:
    code = exit_code_for(exc)
    if as_json:
        payload: dict[str, Any] = {"error": str(exc), "type": type(exc).__name__}
        if isinstance(exc, errors.ManifestError):
            payload["problems"] = [p.__dict__ for p in exc.problems]
        if isinstance(exc, errors.PolicyViolation):
            payload["failures"] = exc.failures
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        # Text, not markup: messages contain brackets such as "inputs[0]".
        Console(stderr=True, highlight=False).print(
            Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True
        )
    return code
