"""Schedules: batch jobs submitted at cron times or when a model's alias moves.

A schedule is a row in the ``schedules`` table (migration ``0005``) holding
a batch spec and *when* to submit it as a job record (:mod:`.records`):

* a **cron** expression (five fields, minute resolution) read in an explicit
  IANA time zone, so ``0 2 * * *`` in ``Europe/Zurich`` is 02:00 local time
  on both sides of a DST change (a time skipped by the clock change runs at
  the first minute after it, a repeated one runs once); due instants are
  stored in UTC;
* or a **trigger**: "when ``ns/classifier`` gets the alias ``production``".

A :class:`Scheduler` decides the due runs and submits their jobs.  Several
schedulers may share one database (each ``sciserve serve`` runs one): every
decision is taken in ONE transaction that locks the schedule's row
(``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL, so a second scheduler
moves on instead of waiting; SQLite's ``BEGIN IMMEDIATE`` serialises
writers), re-reads its progress, records the run in ``schedule_runs``
(``UNIQUE(schedule_id, due_key)`` is the second guard), inserts the job
record and advances the progress.  So each due run happens exactly once.

Missed runs: a due instant more than ``grace`` in the past when a scheduler
first sees it (every scheduler was down) is *late*.  Policy ``run_once``
submits one run for the latest late instant and records the earlier ones
as ``missed``; policy ``skip`` records every late instant as ``skipped``
and submits nothing.  Either way the history shows them.
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from cronsim import CronSim, CronSimError
from sqlalchemy.engine import Engine

from ..access._db import aware, writing
from ..access.priority import Priority, parse_priority
from ..config import Settings
from ..errors import Conflict, InvalidInput, NotFound, SciserveError
from ..package.manifest import NAMESPACE_RE
from ..package.reference import LATEST, parse_reference
from ..registry import db
from ..registry.db import metadata, utcnow
from ._database import DatabaseStore, open_engine
from .records import MAX_SPEC_BYTES, JobOrigin, JobState, insert_job, jobs_table

__all__ = [
    "DEFAULT_GRACE",
    "CronRule",
    "MissedPolicy",
    "Run",
    "RunOutcome",
    "Schedule",
    "ScheduleStore",
    "Scheduler",
    "running_scheduler",
    "schedule_runs_table",
    "schedules_table",
]

log = logging.getLogger(__name__)

_ts = sa.DateTime(timezone=True)

schedules_table = sa.Table(
    "schedules",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    #: The namespace of the jobs it submits (whose access rules govern them).
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    #: The batch spec submitted at every run (YAML text, as given).
    sa.Column("spec", sa.Text, nullable=False),
    #: Five-field cron expression and its IANA time zone (both or neither).
    sa.Column("cron", sa.String(128)),
    sa.Column("timezone", sa.String(64)),
    #: Or a trigger: the model ``ns/name`` and the alias whose moves fire it.
    sa.Column("trigger_model", sa.String(200)),
    sa.Column("trigger_alias", sa.String(64)),
    #: What to do with runs missed while no scheduler ran: ``run_once`` or ``skip``.
    sa.Column("missed", sa.String(16), nullable=False),
    sa.Column("priority", sa.String(16), nullable=False),
    sa.Column("cluster", sa.String(64)),
    #: Who added it; its jobs are submitted in this name.
    sa.Column("owner", sa.String(384), nullable=False),
    sa.Column("created_at", _ts, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    #: Cron: the next due instant not yet decided (UTC).
    sa.Column("next_due_at", _ts, index=True),
    #: Trigger: the version id the alias pointed at when last handled.
    sa.Column("trigger_seen", sa.String(120)),
    sa.UniqueConstraint("namespace", "name", name="uq_schedules_namespace_name"),
)

schedule_runs_table = sa.Table(
    "schedule_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column(
        "schedule_id",
        sa.ForeignKey("schedules.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    #: What was due: the ISO due instant, or ``alias:<version>:<moved at>``.
    sa.Column("due_key", sa.String(200), nullable=False),
    sa.Column("due_at", _ts, nullable=False),
    sa.Column("decided_at", _ts, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("job_id", sa.String(40)),
    #: The scheduler that decided it.
    sa.Column("scheduler", sa.String(128), nullable=False),
    sa.Column("detail", sa.Text),
    sa.UniqueConstraint("schedule_id", "due_key", name="uq_schedule_runs_schedule_id"),
)

#: How late a due instant may be and still count as on time (a scheduler
#: looks every few seconds); later ones were missed.
DEFAULT_GRACE = timedelta(minutes=2)
#: Due instants decided one by one after an outage; more are summed up in one row.
MAX_CATCH_UP = 1000
#: The ``schedules.cron`` column's width.
MAX_CRON_LENGTH = 128
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class MissedPolicy(enum.Enum):
    """What a scheduler does with due instants it sees late (every scheduler was down)."""

    #: Submit one run, for the latest missed instant; record the others as missed.
    RUN_ONCE = "run_once"
    #: Submit nothing; record every missed instant as skipped.
    SKIP = "skip"

    @classmethod
    def parse(cls, value: str | MissedPolicy) -> MissedPolicy:
        if isinstance(value, MissedPolicy):
            return value
        try:
            return cls(value)
        except ValueError:
            raise InvalidInput(
                f"unknown missed-run policy {value!r}; choose run_once or skip"
            ) from None


class RunOutcome(enum.Enum):
    """What a scheduler decided for one due run."""

    SUBMITTED = "submitted"
    #: Late, and a later run of the same outage stands for it (``run_once``).
    MISSED = "missed"
    #: Late, and not run (``skip``).
    SKIPPED = "skipped"


class CronRule:
    """A five-field cron expression read in an IANA time zone.

    >>> rule = CronRule("0 2 * * *", "Europe/Zurich")
    >>> rule.next_after(datetime(2026, 7, 1, tzinfo=UTC)).isoformat()
    '2026-07-01T00:00:00+00:00'
    """

    def __init__(self, expression: str, timezone: str) -> None:
        self.expression = " ".join(expression.split())
        if len(self.expression) > MAX_CRON_LENGTH:
            raise InvalidInput(
                f"cron expression is over {MAX_CRON_LENGTH} characters; "
                "use ranges and steps (e.g. */5) rather than long lists"
            )
        self.timezone = timezone
        self.zone = _zone(timezone)
        fields = self.expression.split(" ")
        # Standard cron: cronsim also takes a sixth (seconds) field, which
        # would make a schedule fire every second.
        if len(fields) != 5:
            raise InvalidInput(
                f"cron expression {expression[:80]!r} has {len(fields)} fields; "
                "give five: minute hour day-of-month month day-of-week (e.g. '0 2 * * *')"
            )
        try:
            CronSim(self.expression, datetime(2000, 1, 1, tzinfo=self.zone))
        except CronSimError as exc:
            raise InvalidInput(f"invalid cron expression {expression[:80]!r}: {exc}") from exc
        # An expression that matches no date (e.g. 30 February) is refused now.
        self.next_after(datetime(2000, 1, 1, tzinfo=UTC))

    def next_after(self, instant: datetime) -> datetime:
        """The first due instant strictly after ``instant``, in UTC."""
        try:
            due = next(CronSim(self.expression, instant.astimezone(self.zone)))
        except StopIteration:
            raise InvalidInput(f"cron expression {self.expression!r} is never due") from None
        return due.astimezone(UTC)

    def latest_until(self, instant: datetime) -> datetime:
        """The last due instant at or before ``instant``, in UTC."""
        later = instant.astimezone(self.zone) + timedelta(seconds=1)
        try:
            due = next(CronSim(self.expression, later.replace(microsecond=0), reverse=True))
        except StopIteration:
            raise InvalidInput(f"cron expression {self.expression!r} is never due") from None
        return due.astimezone(UTC)


def _zone(name: str) -> ZoneInfo:
    if not name or len(name) > 64:
        raise InvalidInput("give an IANA time zone such as Europe/Zurich or UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidInput(
            f"unknown time zone {name!r}; give an IANA name such as Europe/Zurich or UTC"
        ) from exc


@dataclass(frozen=True)
class Schedule:
    """One schedule as stored."""

    id: int
    namespace: str
    name: str
    spec: str
    cron: str | None
    timezone: str | None
    trigger_model: str | None
    trigger_alias: str | None
    missed: MissedPolicy
    priority: Priority
    cluster: str | None
    owner: str
    created_at: datetime
    enabled: bool
    next_due_at: datetime | None
    trigger_seen: str | None

    @property
    def when(self) -> str:
        """``0 2 * * * (Europe/Zurich)`` or ``on ns/model@production``."""
        if self.cron is not None:
            return f"{self.cron} ({self.timezone})"
        return f"on {self.trigger_model}@{self.trigger_alias}"

    def to_dict(self, *, spec: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "namespace": self.namespace,
            "name": self.name,
            "cron": self.cron,
            "timezone": self.timezone,
            "on_alias": (
                f"{self.trigger_model}@{self.trigger_alias}" if self.trigger_model else None
            ),
            "missed": self.missed.value,
            "priority": self.priority.name.lower(),
            "cluster": self.cluster,
            "owner": self.owner,
            "created_at": self.created_at.isoformat(),
            "enabled": self.enabled,
            "next_due_at": self.next_due_at.isoformat() if self.next_due_at else None,
        }
        if spec:
            data["spec"] = self.spec
        return data

    @classmethod
    def _from_row(cls, row: Any) -> Schedule:
        return cls(
            id=row.id,
            namespace=row.namespace,
            name=row.name,
            spec=row.spec,
            cron=row.cron,
            timezone=row.timezone,
            trigger_model=row.trigger_model,
            trigger_alias=row.trigger_alias,
            missed=MissedPolicy(row.missed),
            priority=Priority[row.priority.upper()],
            cluster=row.cluster,
            owner=row.owner,
            created_at=aware(row.created_at),
            enabled=bool(row.enabled),
            next_due_at=aware(row.next_due_at),
            trigger_seen=row.trigger_seen,
        )


@dataclass(frozen=True)
class Run:
    """One decided due run of a schedule."""

    schedule_id: int
    due_key: str
    due_at: datetime
    decided_at: datetime
    outcome: RunOutcome
    job_id: str | None
    scheduler: str
    detail: str | None
    #: The job's state now (history only).
    job_state: JobState | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schedule_id": self.schedule_id,
            "due_key": self.due_key,
            "due_at": self.due_at.isoformat(),
            "decided_at": self.decided_at.isoformat(),
            "outcome": self.outcome.value,
            "job_id": self.job_id,
            "job_state": self.job_state.value if self.job_state else None,
            "scheduler": self.scheduler,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class _Target:
    """Where an alias points now."""

    version_id: int
    ref: str
    moved_at: datetime


def _alias_target(conn: sa.Connection, model: str, alias: str) -> _Target | None:
    namespace, _, name = model.partition("/")
    a, m, n, v = db.aliases, db.models, db.namespaces, db.versions
    row = conn.execute(
        sa.select(a.c.version_id, a.c.updated_at, v.c.version)
        .join(m, a.c.model_id == m.c.id)
        .join(n, m.c.namespace_id == n.c.id)
        .join(v, a.c.version_id == v.c.id)
        .where(n.c.name == namespace, m.c.name == name, a.c.alias == alias)
    ).first()
    if row is None:
        return None
    return _Target(row.version_id, f"{model}:{row.version}", aware(row.updated_at))


def _parse_trigger(text: str) -> tuple[str, str]:
    """``ns/model@alias`` → (``ns/model``, ``alias``)."""
    if len(text) > 260:  # namespace, name and alias at their longest
        raise InvalidInput("--on-alias is too long to name a model and an alias")
    ref = parse_reference(text)
    if ref.alias is None or ref.version is not None:
        raise InvalidInput(
            f"--on-alias {text[:200]!r}: give MODEL@ALIAS, e.g. ns/classifier@production"
        )
    if ref.alias == LATEST:
        raise InvalidInput(
            "'latest' moves with every publication; trigger on an alias you set (e.g. production)"
        )
    return f"{ref.namespace}/{ref.name}", ref.alias


class ScheduleStore(DatabaseStore):
    """Schedules in a registry database: add, list, get, remove and their history.
    Use as a context manager or :meth:`close` it when it owns its engine (:meth:`open`)."""

    def add(
        self,
        name: str,
        spec: str,
        *,
        namespace: str,
        owner: str,
        cron: str | None = None,
        timezone: str | None = None,
        on_alias: str | None = None,
        missed: MissedPolicy | str = MissedPolicy.RUN_ONCE,
        priority: Priority | str = Priority.BATCH,
        cluster: str | None = None,
        now: datetime | None = None,
    ) -> Schedule:
        """A new schedule: ``cron`` with its ``timezone``, or ``on_alias`` (``ns/model@alias``).

        The first cron run is the first due instant after ``now``; a trigger
        takes the alias's current version as seen (it fires on the next move).
        The spec is stored as given; the caller has checked it.
        """
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise InvalidInput(
                f"schedule name {str(name)[:80]!r}: use 1-64 lower-case letters, digits, "
                "'_', '.' or '-', starting with a letter or digit"
            )
        if not NAMESPACE_RE.fullmatch(namespace):
            raise InvalidInput(f"{namespace[:80]!r} is not a valid namespace")
        if not spec.strip():
            raise InvalidInput("the spec is empty")
        if len(spec.encode()) > MAX_SPEC_BYTES:
            raise InvalidInput(f"the spec is over {MAX_SPEC_BYTES} bytes")
        if cluster is not None and not (0 < len(cluster) <= 64):
            raise InvalidInput("a cluster profile name has 1-64 characters")
        policy = MissedPolicy.parse(missed)
        prio = parse_priority(priority)
        if (cron is None) == (on_alias is None):
            raise InvalidInput("give either a cron expression (with its time zone) or an alias")
        now = now or utcnow()
        values: dict[str, Any] = {}
        if cron is not None:
            if timezone is None:
                raise InvalidInput(
                    "a cron schedule needs its time zone, e.g. --tz Europe/Zurich or --tz UTC"
                )
            rule = CronRule(cron, timezone)
            values |= {
                "cron": rule.expression,
                "timezone": timezone,
                "next_due_at": rule.next_after(now),
            }
        else:
            if timezone is not None:
                raise InvalidInput("a time zone goes with a cron expression, not with an alias")
            assert on_alias is not None
            model, alias = _parse_trigger(on_alias)
            values |= {"trigger_model": model, "trigger_alias": alias}
        with writing(self._engine) as conn:
            if on_alias is not None:
                self._check_model(conn, values["trigger_model"])
                target = _alias_target(conn, values["trigger_model"], values["trigger_alias"])
                values["trigger_seen"] = str(target.version_id) if target else None
            exists = conn.execute(
                sa.select(schedules_table.c.id).where(
                    schedules_table.c.namespace == namespace, schedules_table.c.name == name
                )
            ).first()
            if exists is not None:
                raise Conflict(f"namespace {namespace} already has a schedule {name!r}")
            conn.execute(
                schedules_table.insert().values(
                    namespace=namespace,
                    name=name,
                    spec=spec,
                    missed=policy.value,
                    priority=prio.name.lower(),
                    cluster=cluster,
                    owner=owner[:384],
                    created_at=now,
                    enabled=True,
                    **values,
                )
            )
            when = f"{cron} ({timezone})" if cron is not None else f"on {on_alias}"
            _audit(conn, "schedule-add", f"{namespace}/{name}", owner, {"when": when})
        return self.get(name, namespace=namespace)

    @staticmethod
    def _check_model(conn: sa.Connection, model: str) -> None:
        namespace, _, name = model.partition("/")
        m, n = db.models, db.namespaces
        found = conn.execute(
            sa.select(m.c.id)
            .join(n, m.c.namespace_id == n.c.id)
            .where(n.c.name == namespace, m.c.name == name)
        ).first()
        if found is None:
            # The user named the trigger: a typo is their input, not a lookup.
            raise InvalidInput(f"no model {model} in the registry to trigger on")

    def get(self, name: str, *, namespace: str) -> Schedule:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(schedules_table).where(
                    schedules_table.c.namespace == namespace, schedules_table.c.name == name
                )
            ).first()
        if row is None:
            raise NotFound(f"no schedule {str(name)[:80]!r} in namespace {namespace[:80]}")
        return Schedule._from_row(row)

    def list(self, *, namespace: str | None = None) -> list[Schedule]:
        """By namespace and name; ``namespace=None`` means all of them."""
        query = sa.select(schedules_table).order_by(
            schedules_table.c.namespace, schedules_table.c.name
        )
        if namespace is not None:
            query = query.where(schedules_table.c.namespace == namespace)
        with self._engine.connect() as conn:
            return [Schedule._from_row(row) for row in conn.execute(query)]

    def remove(self, name: str, *, namespace: str, actor: str | None = None) -> Schedule:
        """Delete a schedule and its history (its jobs stay); no scheduler fires it again."""
        schedule = self.get(name, namespace=namespace)
        with writing(self._engine) as conn:
            conn.execute(
                schedule_runs_table.delete().where(schedule_runs_table.c.schedule_id == schedule.id)
            )
            done = conn.execute(
                schedules_table.delete().where(schedules_table.c.id == schedule.id)
            ).rowcount
            _audit(conn, "schedule-remove", f"{namespace}/{name}", actor, None)
        if done != 1:
            raise NotFound(f"no schedule {name!r} in namespace {namespace}")
        return schedule

    def history(self, name: str, *, namespace: str, limit: int = 100) -> builtins.list[Run]:
        """The schedule's decided runs, newest first, with their jobs' states."""
        schedule = self.get(name, namespace=namespace)
        r = schedule_runs_table
        query = (
            sa.select(r, jobs_table.c.state.label("job_state"))
            .select_from(r.outerjoin(jobs_table, r.c.job_id == jobs_table.c.id))
            .where(r.c.schedule_id == schedule.id)
            .order_by(r.c.due_at.desc(), r.c.id.desc())
            .limit(max(1, min(limit, 10_000)))
        )
        with self._engine.connect() as conn:
            return [_run(row) for row in conn.execute(query)]


def _audit(conn: sa.Connection, action: str, subject: str, actor: str | None, detail: Any) -> None:
    """A line in the registry's audit trail (``events``), in the change's transaction."""
    conn.execute(
        db.events.insert().values(
            at=utcnow(),
            action=action,
            subject=subject,
            actor=actor[:128] if actor else None,
            detail=json.dumps(detail, sort_keys=True) if detail else None,
        )
    )


def _run(row: Any) -> Run:
    state = getattr(row, "job_state", None)
    return Run(
        schedule_id=row.schedule_id,
        due_key=row.due_key,
        due_at=aware(row.due_at),
        decided_at=aware(row.decided_at),
        outcome=RunOutcome(row.outcome),
        job_id=row.job_id,
        scheduler=row.scheduler,
        detail=row.detail,
        job_state=JobState(state) if state else None,
    )


def default_scheduler_name() -> str:
    """``host:pid``: who decided a run, in the history."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


class Scheduler:
    """Decides the due runs of every schedule and submits their jobs.

    ``clock`` gives the current time (UTC, aware); tests pass their own.
    Any number of schedulers may share a database: each due run is decided
    by exactly one of them.
    """

    def __init__(
        self,
        source: Settings | Engine,
        *,
        name: str | None = None,
        clock: Callable[[], datetime] = utcnow,
        grace: timedelta = DEFAULT_GRACE,
    ) -> None:
        if isinstance(source, Engine):
            self._engine, self._owns = source, False
        else:
            self._engine, self._owns = open_engine(source, create=True), True
        self.name = (name or default_scheduler_name())[:128]
        self._clock = clock
        self.grace = grace

    def close(self) -> None:
        if self._owns:
            self._engine.dispose()

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tick(self) -> list[Run]:
        """One pass: decide every due cron instant and every alias move; the runs decided."""
        now = self._clock()
        runs: list[Run] = []
        for schedule_id in self._candidates(now):
            try:
                runs += self._decide(schedule_id, now)
            except SciserveError as exc:
                # One broken schedule (e.g. a spec grown too large) must not
                # stop the others.
                log.warning("schedule %s: %s", schedule_id, exc)
        return runs

    def serve_forever(self, stop: threading.Event, interval: float = 5.0) -> None:
        """Tick every ``interval`` seconds until ``stop`` is set; a database
        outage is logged and retried, not fatal."""
        while not stop.is_set():
            try:
                runs = self.tick()
            except (sa.exc.SQLAlchemyError, SciserveError) as exc:
                log.warning("scheduler %s: %s; trying again in %ss", self.name, exc, interval)
            else:
                for run in runs:
                    log.info(
                        "schedule %s: %s %s%s",
                        run.schedule_id,
                        run.due_key,
                        run.outcome.value,
                        f" as job {run.job_id}" if run.job_id else "",
                    )
            stop.wait(interval)

    # -- internals -----------------------------------------------------------

    def _candidates(self, now: datetime) -> list[int]:
        s = schedules_table
        with self._engine.connect() as conn:
            due = conn.execute(
                sa.select(s.c.id)
                .where(s.c.enabled.is_(True), s.c.cron.is_not(None), s.c.next_due_at <= now)
                .order_by(s.c.next_due_at, s.c.id)
            ).scalars()
            ids = list(due)
            triggers = conn.execute(
                sa.select(s.c.id, s.c.trigger_model, s.c.trigger_alias, s.c.trigger_seen).where(
                    s.c.enabled.is_(True), s.c.trigger_model.is_not(None)
                )
            ).all()
            # Cheap unlocked look first: only a trigger whose alias moved is locked.
            for row in triggers:
                target = _alias_target(conn, row.trigger_model, row.trigger_alias)
                if (str(target.version_id) if target else None) != row.trigger_seen:
                    ids.append(row.id)
        return ids

    def _decide(self, schedule_id: int, now: datetime) -> list[Run]:
        query = sa.select(schedules_table).where(
            schedules_table.c.id == schedule_id, schedules_table.c.enabled.is_(True)
        )
        try:
            with writing(self._engine) as conn:
                if conn.dialect.name == "postgresql":
                    # Another scheduler holding the row is deciding it: move on.
                    query = query.with_for_update(skip_locked=True)
                row = conn.execute(query).first()
                if row is None:
                    return []
                schedule = Schedule._from_row(row)
                if schedule.cron is not None:
                    return self._cron_runs(conn, schedule, now)
                return self._trigger_runs(conn, schedule, now)
        except sa.exc.IntegrityError:
            # The unique (schedule, due_key) key: another scheduler recorded
            # this run first; nothing of this transaction was kept.
            return []

    def _cron_runs(self, conn: sa.Connection, schedule: Schedule, now: datetime) -> list[Run]:
        assert schedule.cron is not None
        assert schedule.timezone is not None
        rule = CronRule(schedule.cron, schedule.timezone)
        due = schedule.next_due_at
        if due is None or due > now:
            return []  # decided meanwhile by another scheduler
        dues: list[datetime] = []
        while due <= now and len(dues) < MAX_CATCH_UP:
            dues.append(due)
            due = rule.next_after(due)
        runs: list[Run] = []
        late_outcome = (
            RunOutcome.MISSED if schedule.missed is MissedPolicy.RUN_ONCE else RunOutcome.SKIPPED
        )
        if due <= now:
            # A long outage: the instants between the ones listed and the
            # latest are summed up in one row rather than thousands.
            latest = rule.latest_until(now)
            if latest > due:
                runs.append(
                    self._record(
                        conn,
                        schedule,
                        f"{due.isoformat()}/{latest.isoformat()}",
                        due,
                        now,
                        late_outcome,
                        f"every due instant from {due.isoformat()} until before "
                        f"{latest.isoformat()} was missed (no scheduler ran)",
                    )
                )
            dues.append(latest)
        on_time = [d for d in dues if now - d <= self.grace]
        late = [d for d in dues if now - d > self.grace]
        run_late = schedule.missed is MissedPolicy.RUN_ONCE and late and not on_time
        for d in late:
            lateness = _duration(now - d)
            if run_late and d == late[-1]:
                runs.append(
                    self._submit(
                        conn,
                        schedule,
                        d.isoformat(),
                        d,
                        now,
                        f"late by {lateness}; run once on start (missed: run_once)",
                    )
                )
            elif late_outcome is RunOutcome.MISSED:
                runs.append(
                    self._record(
                        conn,
                        schedule,
                        d.isoformat(),
                        d,
                        now,
                        RunOutcome.MISSED,
                        f"late by {lateness}; a later run stands for it (missed: run_once)",
                    )
                )
            else:
                runs.append(
                    self._record(
                        conn,
                        schedule,
                        d.isoformat(),
                        d,
                        now,
                        RunOutcome.SKIPPED,
                        f"late by {lateness}; not run (missed: skip)",
                    )
                )
        for d in on_time:
            runs.append(self._submit(conn, schedule, d.isoformat(), d, now, None))
        conn.execute(
            schedules_table.update()
            .where(schedules_table.c.id == schedule.id)
            .values(next_due_at=rule.next_after(dues[-1]))
        )
        return runs

    def _trigger_runs(self, conn: sa.Connection, schedule: Schedule, now: datetime) -> list[Run]:
        assert schedule.trigger_model is not None
        assert schedule.trigger_alias is not None
        target = _alias_target(conn, schedule.trigger_model, schedule.trigger_alias)
        seen = str(target.version_id) if target else None
        if seen == schedule.trigger_seen:
            return []  # decided meanwhile by another scheduler
        runs: list[Run] = []
        if target is not None:
            key = f"alias:{target.ref.rpartition(':')[2]}:{target.moved_at.isoformat()}"
            moved = f"{schedule.trigger_model}@{schedule.trigger_alias} moved to {target.ref}"
            if now - target.moved_at <= self.grace or schedule.missed is MissedPolicy.RUN_ONCE:
                late = now - target.moved_at > self.grace
                note = f"; seen late by {_duration(now - target.moved_at)}" if late else ""
                runs.append(
                    self._submit(conn, schedule, key[:200], target.moved_at, now, moved + note)
                )
            else:
                runs.append(
                    self._record(
                        conn,
                        schedule,
                        key[:200],
                        target.moved_at,
                        now,
                        RunOutcome.SKIPPED,
                        f"{moved}; seen late by {_duration(now - target.moved_at)}; "
                        "not run (missed: skip)",
                    )
                )
        # An alias removed fires nothing; its next appearance is a move.
        conn.execute(
            schedules_table.update()
            .where(schedules_table.c.id == schedule.id)
            .values(trigger_seen=seen)
        )
        return runs

    def _submit(
        self,
        conn: sa.Connection,
        schedule: Schedule,
        key: str,
        due: datetime,
        now: datetime,
        detail: str | None,
    ) -> Run:
        job_id = insert_job(
            conn,
            schedule.spec,
            namespace=schedule.namespace,
            submitter=schedule.owner,
            priority=schedule.priority,
            cluster=schedule.cluster,
            schedule_id=schedule.id,
            origin=JobOrigin.SCHEDULE,
            note=f"schedule {schedule.namespace}/{schedule.name}, due {due.isoformat()}",
        )
        return self._record(conn, schedule, key, due, now, RunOutcome.SUBMITTED, detail, job_id)

    def _record(
        self,
        conn: sa.Connection,
        schedule: Schedule,
        key: str,
        due: datetime,
        now: datetime,
        outcome: RunOutcome,
        detail: str | None,
        job_id: str | None = None,
    ) -> Run:
        run = Run(
            schedule_id=schedule.id,
            due_key=key,
            due_at=due,
            decided_at=now,
            outcome=outcome,
            job_id=job_id,
            scheduler=self.name,
            detail=detail,
        )
        conn.execute(
            schedule_runs_table.insert().values(
                schedule_id=run.schedule_id,
                due_key=run.due_key,
                due_at=run.due_at,
                decided_at=run.decided_at,
                outcome=run.outcome.value,
                job_id=run.job_id,
                scheduler=run.scheduler,
                detail=run.detail,
            )
        )
        return run


@contextlib.contextmanager
def running_scheduler(settings: Settings, *, interval: float = 5.0) -> Iterator[Scheduler]:
    """A scheduler ticking in a thread of this process (it only does database
    I/O) until the block ends; what ``sciserve serve`` runs beside its models."""
    stop = threading.Event()
    with Scheduler(settings) as scheduler:
        thread = threading.Thread(
            target=scheduler.serve_forever,
            args=(stop, interval),
            name="sciserve-scheduler",
            # A tick stuck on the database must not keep a stopping server alive.
            daemon=True,
        )
        thread.start()
        try:
            yield scheduler
        finally:
            stop.set()
            thread.join(timeout=30)


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}min"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
