"""Shared CLI state, output helpers and the one error → exit-code table."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
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
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        # Text, not markup: messages contain brackets such as "inputs[0]".
        Console(stderr=True, highlight=False).print(
            Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True
        )
    return code
