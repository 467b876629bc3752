"""``sciserve schedules add|list|remove|history`` and ``sciserve scheduler``."""

from __future__ import annotations

import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import InvalidInput, ReadOnlyRegistry
from ._context import State, folding_table, local_actor, log_to_stderr, state

if TYPE_CHECKING:
    from ..jobs.schedules import Schedule, ScheduleStore

__all__ = ["register"]

_MISSED_HELP = (
    "What to do with due runs missed while no scheduler ran (a due time more than "
    "--grace in the past when a scheduler first sees it): run_once submits one run, "
    "for the latest, and records the others as missed; skip records them all as "
    "skipped and submits nothing.  The history shows them either way."
)


def register(app: typer.Typer) -> None:
    schedules = typer.Typer(
        name="schedules",
        help="Submit batch jobs at cron times or when a model's alias moves "
        "(run by `sciserve scheduler` and by `sciserve serve`).",
        no_args_is_help=True,
    )
    schedules.command("add")(add)
    schedules.command("list")(list_)
    schedules.command("remove")(remove)
    schedules.command("history")(history)
    app.add_typer(schedules, name="schedules")
    app.command("scheduler")(scheduler)


def _store(st: State, *, create: bool = True) -> ScheduleStore:
    from ..jobs.schedules import ScheduleStore

    settings = st.settings
    if settings.server_url:
        raise InvalidInput(
            "schedules work on the registry database directly; run this where the "
            "registry is, without --server / SCISERVE_URL"
        )
    return ScheduleStore.open(settings, create=create)


def _read_spec(path: Path) -> str:
    """The spec's text, checked as a batch spec; a scheduled job runs later and
    elsewhere, so the files it names must not depend on this directory."""
    import yaml

    from .. import _yaml
    from ..jobs.records import MAX_SPEC_BYTES
    from ..streams.spec import parse_batch_spec

    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read batch spec {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_SPEC_BYTES:
        raise InvalidInput(f"batch spec {path} is over {MAX_SPEC_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"batch spec {path} is not UTF-8 text") from exc
    try:
        data = _yaml.load(text, what="a batch spec")
    except yaml.YAMLError as exc:
        raise InvalidInput(f"batch spec {path} is not valid YAML: {exc}") from exc
    parse_batch_spec(data, base_dir=path.resolve().parent, source=str(path))
    assert isinstance(data, dict)  # parse_batch_spec refuses anything else
    entry = data.get("input")
    features = data.get("features")
    python = features.get("python") if isinstance(features, dict) else None
    for what, value in (("input", entry), ("features.python", python)):
        if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
            raise InvalidInput(
                f"batch spec {path}: {what} {value!r} is relative; a scheduled job runs "
                "later, from another directory: give an absolute path or a URL"
            )
    return text


def _named(store: ScheduleStore, name: str, namespace: str | None) -> Schedule:
    """The schedule ``name`` in ``namespace``, or the only one of that name."""
    from ..errors import NotFound

    if namespace is not None:
        return store.get(name, namespace=namespace)
    found = [s for s in store.list() if s.name == name]
    if not found:
        raise NotFound(f"no schedule {name[:80]!r}")
    if len(found) > 1:
        spaces = ", ".join(s.namespace for s in found)
        raise InvalidInput(f"schedules named {name!r} are in {spaces}: give --namespace")
    return found[0]


def _utc(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _row(schedule: Schedule) -> list[str]:
    due = _utc(schedule.next_due_at) if schedule.next_due_at else ""
    return [
        f"{schedule.namespace}/{schedule.name}",
        schedule.when,
        due,
        schedule.missed.value,
        schedule.cluster or "",
        schedule.owner,
    ]


def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Schedule name.", show_default=False)],
    spec: Annotated[Path, typer.Argument(help="Batch spec (YAML).", show_default=False)],
    cron: Annotated[
        str | None,
        typer.Option(help="Five-field cron expression, e.g. '0 2 * * *' (needs --tz)."),
    ] = None,
    tz: Annotated[
        str | None,
        typer.Option("--tz", help="IANA time zone of --cron, e.g. Europe/Zurich or UTC."),
    ] = None,
    on_alias: Annotated[
        str | None,
        typer.Option(
            "--on-alias",
            help="Run whenever this alias moves to another version, e.g. ns/classifier@production.",
        ),
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            help="Namespace of the schedule and its jobs [default: the --on-alias model's, "
            "else default]."
        ),
    ] = None,
    missed: Annotated[str, typer.Option(help=_MISSED_HELP)] = "run_once",
    cluster: Annotated[
        str | None, typer.Option(help="Run the jobs on this cluster profile.")
    ] = None,
    priority: Annotated[str, typer.Option(help="realtime, interactive or batch.")] = "batch",
) -> None:
    """Add a schedule: the batch spec is submitted as a job at every --cron time
    (in --tz) or at every move of --on-alias.  Give exactly one of the two."""
    from ..jobs.schedules import MissedPolicy
    from ..package.reference import parse_reference

    if (cron is None) == (on_alias is None):
        raise InvalidInput("give either --cron (with --tz) or --on-alias, not both, not neither")
    if cron is not None and tz is None:
        raise InvalidInput("--cron needs --tz: the time zone it is read in (e.g. UTC)")
    policy = MissedPolicy.parse(missed)
    st = state(ctx)
    if cluster is not None:
        st.settings.cluster(cluster)  # an unknown profile names the known ones
    text = _read_spec(spec)
    if namespace is None:
        namespace = parse_reference(on_alias).namespace if on_alias else "default"
    with _store(st) as store:
        schedule = store.add(
            name,
            text,
            namespace=namespace,
            owner=local_actor(),
            cron=cron,
            timezone=tz,
            on_alias=on_alias,
            missed=policy,
            priority=priority,
            cluster=cluster,
        )

    def human() -> None:
        first = (
            f"; first run {schedule.next_due_at.isoformat()}"
            if schedule.next_due_at
            else "; it runs at the alias's next move"
        )
        st.console.print(
            f"schedule {schedule.namespace}/{schedule.name} added: {schedule.when}{first}; "
            f"missed runs: {schedule.missed.value}",
            soft_wrap=True,
        )

    st.emit(schedule.to_dict(spec=False), human)


def list_(
    ctx: typer.Context,
    namespace: Annotated[
        str | None, typer.Option(help="Only this namespace [default: all].")
    ] = None,
) -> None:
    """List schedules, with when they next run."""
    st = state(ctx)
    with _store(st, create=False) as store:
        items = store.list(namespace=namespace)

    def human() -> None:
        if not items:
            st.console.print("no schedules")
            return
        headers = ["schedule", "when", "next due (UTC)", "missed", "cluster", "owner"]
        st.console.print(
            folding_table(
                headers,
                [_row(s) for s in items],
                width=st.console.width,
                fixed=("next due (UTC)", "missed"),
            )
        )

    st.emit([s.to_dict(spec=False) for s in items], human)


def remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Schedule name.", show_default=False)],
    namespace: Annotated[
        str | None, typer.Option(help="Its namespace [default: the only one with that name].")
    ] = None,
) -> None:
    """Remove a schedule and its history; jobs it submitted stay."""
    st = state(ctx)
    with _store(st, create=False) as store:
        schedule = _remove(store, name, namespace)
    st.emit(
        {"removed": f"{schedule.namespace}/{schedule.name}"},
        lambda: st.console.print(f"schedule {schedule.namespace}/{schedule.name} removed"),
    )


def _remove(store: ScheduleStore, name: str, namespace: str | None) -> Schedule:
    found = _named(store, name, namespace)
    return store.remove(found.name, namespace=found.namespace, actor=local_actor())


def history(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Schedule name.", show_default=False)],
    namespace: Annotated[
        str | None, typer.Option(help="Its namespace [default: the only one with that name].")
    ] = None,
    limit: Annotated[int, typer.Option(help="Newest runs shown.", min=1, max=10_000)] = 50,
) -> None:
    """A schedule's runs, newest first: due time, outcome (submitted, missed,
    skipped), the job and its state."""
    st = state(ctx)
    with _store(st, create=False) as store:
        found = _named(store, name, namespace)
        runs = store.history(found.name, namespace=found.namespace, limit=limit)

    def human() -> None:
        if not runs:
            st.console.print(f"schedule {found.namespace}/{found.name} has not run yet")
            return
        rows = [
            [
                _utc(r.due_at),
                r.outcome.value,
                r.job_id or "",
                r.job_state.value if r.job_state else "",
                r.detail or "",
            ]
            for r in runs
        ]
        st.console.print(
            folding_table(
                ["due (UTC)", "outcome", "job", "state", "detail"],
                rows,
                width=st.console.width,
                fixed=("due (UTC)", "outcome", "job", "state"),
            )
        )

    st.emit([r.to_dict() for r in runs], human)


def scheduler(
    ctx: typer.Context,
    interval: Annotated[
        float, typer.Option(help="Seconds between looks at the schedules.", min=0.01, max=3600)
    ] = 5.0,
    grace: Annotated[
        float,
        typer.Option(
            help="Seconds a due run may be late and still run as on time; later, the "
            "schedule's missed-run policy decides.",
            min=1,
            max=7 * 86400,
        ),
    ] = 120.0,
) -> None:
    """Run the schedules until SIGTERM or Ctrl-C.  Any number of schedulers
    (and servers, which run one) may share a database: each due run happens once."""
    from ..jobs.schedules import Scheduler

    st = state(ctx)
    settings = st.settings
    if settings.server_url:
        raise InvalidInput(
            "the scheduler works on the registry database directly; run it where the "
            "registry is, without --server / SCISERVE_URL"
        )
    if settings.read_only:
        raise ReadOnlyRegistry(
            "a scheduler records its runs: it cannot work on a read-only registry"
        )
    log_to_stderr()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        with Scheduler(settings, grace=timedelta(seconds=grace)) as runner:
            sys.stderr.write(f"scheduler {runner.name} running every {interval:g}s\n")
            sys.stderr.flush()
            runner.serve_forever(stop, interval)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.stderr.write("scheduler stopped\n")
