"""Job records in the registry database: what was asked, by whom, and how it went.

A batch job submitted through ``sciserve jobs submit`` or ``POST
/v2/sciserve/jobs`` is a row in the ``jobs`` table (migration ``0004``),
so every process sharing the database sees it: the server that took the
request, the runner that executes it (:mod:`sciserve.batch.runner`), the
CLI of someone asking for its status.  Its state moves along guarded
transitions::

    QUEUED ──► RUNNING ──► SUCCEEDED
      │          │  ├────► FAILED ─────┐
      │          │  └────► CANCELLING ─┼─► CANCELLED
      │          └──► QUEUED           │     │
      └────────────────────────────────┴─────┤  (runner lost: re-queued)
                                             ▼
                                   QUEUED again on resume

Every move is one conditional ``UPDATE … WHERE state IN (…)``, so two
processes racing (two runners claiming, a cancel during the last shard)
cannot both win: the loser sees :class:`~sciserve.errors.Conflict`.
"""

from __future__ import annotations

import enum
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..access.priority import Priority
from ..errors import Conflict, InvalidInput, NotFound
from ..registry.db import metadata, utcnow
from ._database import DatabaseStore

if TYPE_CHECKING:
    from ..registry.registry import Registry

__all__ = [
    "JobLogLine",
    "JobOrigin",
    "JobRecord",
    "JobState",
    "JobStore",
    "insert_job",
    "job_log_table",
    "jobs_table",
    "parse_states",
]

_ts = sa.DateTime(timezone=True)

jobs_table = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    #: The namespace whose access rules govern the job (its models live there).
    sa.Column("namespace", sa.String(64), nullable=False),
    #: The batch spec as submitted (YAML text).
    sa.Column("spec", sa.Text, nullable=False),
    #: Who submitted it: token id / subject@issuer, or the local user.
    sa.Column("submitter", sa.String(384), nullable=False),
    #: How it came: ``local`` (the database's own user), ``api`` (a caller of
    #: the jobs API: its input is confined to ``[jobs] archives``, checked
    #: again when it runs) or ``schedule``.
    sa.Column("origin", sa.String(16), nullable=False, server_default="local"),
    sa.Column("priority", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    #: Cluster profile to run on (NULL: the runner's local cluster).
    sa.Column("cluster", sa.String(64)),
    #: The schedule that fired it, if one did.
    sa.Column("schedule_id", sa.Integer),
    #: The batch job id (output directory name) once planned.
    sa.Column("batch_id", sa.String(100)),
    sa.Column("out_dir", sa.Text),
    sa.Column("shards_total", sa.Integer),
    sa.Column("shards_done", sa.Integer, nullable=False, default=0),
    sa.Column("rows_in", sa.BigInteger, nullable=False, default=0),
    sa.Column("rows_out", sa.BigInteger, nullable=False, default=0),
    sa.Column("dead_letters", sa.BigInteger, nullable=False, default=0),
    sa.Column("submitted_at", _ts, nullable=False),
    sa.Column("started_at", _ts),
    sa.Column("finished_at", _ts),
    #: Last sign of life from the runner executing it.
    sa.Column("heartbeat_at", _ts),
    sa.Column("runner", sa.String(128)),
    #: How many times a runner has started it.
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
    #: JSON: the batch report of the last run.
    sa.Column("report", sa.Text),
    sa.Index("ix_jobs_namespace", "namespace"),
)

job_log_table = sa.Table(
    "job_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("job_id", sa.ForeignKey("jobs.id"), nullable=False, index=True),
    sa.Column("at", _ts, nullable=False),
    sa.Column("level", sa.String(8), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)

#: Longest spec accepted (a spec is a page of YAML, not a data file).
MAX_SPEC_BYTES = 256 * 1024
#: Longest log message kept; longer ones are cut (with a mark) rather than refused.
MAX_LOG_MESSAGE = 8 * 1024
_LEVELS = frozenset({"debug", "info", "warning", "error"})


class JobOrigin(enum.Enum):
    """Who stands behind a job's spec, which decides what a runner re-checks."""

    LOCAL = "local"
    API = "api"
    SCHEDULE = "schedule"


class JobState(enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def active(self) -> bool:
        """Running or about to stop: a runner holds it."""
        return self in (JobState.RUNNING, JobState.CANCELLING)


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

#: state → the states it may move to.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLING, JobState.QUEUED}
    ),
    JobState.CANCELLING: frozenset({JobState.CANCELLED, JobState.FAILED, JobState.SUCCEEDED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),
}


def parse_states(raw: str) -> list[JobState]:
    """``RUNNING`` or ``QUEUED,RUNNING`` (any case) as states; else
    :class:`~sciserve.errors.InvalidInput` naming the choices."""
    try:
        return [JobState(part.strip().upper()) for part in raw.split(",")]
    except ValueError:
        choices = ", ".join(s.value for s in JobState)
        raise InvalidInput(f"a job state is one of {choices}; got {raw[:64]!r}") from None


def _sources(target: JobState) -> list[str]:
    return [s.value for s, targets in TRANSITIONS.items() if target in targets]


@dataclass(frozen=True)
class JobRecord:
    """One job as stored."""

    id: str
    namespace: str
    spec: str
    submitter: str
    origin: JobOrigin
    priority: Priority
    state: JobState
    cluster: str | None
    schedule_id: int | None
    batch_id: str | None
    out_dir: str | None
    shards_total: int | None
    shards_done: int
    rows_in: int
    rows_out: int
    dead_letters: int
    submitted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    runner: str | None
    attempts: int
    error: str | None
    report: dict[str, Any] | None

    def to_dict(self, *, spec: bool = True) -> dict[str, Any]:
        """JSON-ready; ``spec=False`` leaves the spec text out (listings)."""

        def when(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        data: dict[str, Any] = {
            "id": self.id,
            "namespace": self.namespace,
            "submitter": self.submitter,
            "origin": self.origin.value,
            "priority": self.priority.name.lower(),
            "state": self.state.value,
            "cluster": self.cluster,
            "schedule_id": self.schedule_id,
            "batch_id": self.batch_id,
            "out_dir": self.out_dir,
            "shards_total": self.shards_total,
            "shards_done": self.shards_done,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dead_letters": self.dead_letters,
            "submitted_at": when(self.submitted_at),
            "started_at": when(self.started_at),
            "finished_at": when(self.finished_at),
            "heartbeat_at": when(self.heartbeat_at),
            "runner": self.runner,
            "attempts": self.attempts,
            "error": self.error,
            "report": self.report,
        }
        if spec:
            data["spec"] = self.spec
        return data

    @classmethod
    def _from_row(cls, row: Any) -> JobRecord:
        from ..access._db import aware

        return cls(
            id=row.id,
            namespace=row.namespace,
            spec=row.spec,
            submitter=row.submitter,
            origin=JobOrigin(row.origin),
            priority=Priority[row.priority.upper()],
            state=JobState(row.state),
            cluster=row.cluster,
            schedule_id=row.schedule_id,
            batch_id=row.batch_id,
            out_dir=row.out_dir,
            shards_total=row.shards_total,
            shards_done=row.shards_done,
            rows_in=row.rows_in,
            rows_out=row.rows_out,
            dead_letters=row.dead_letters,
            submitted_at=aware(row.submitted_at),
            started_at=aware(row.started_at),
            finished_at=aware(row.finished_at),
            heartbeat_at=aware(row.heartbeat_at),
            runner=row.runner,
            attempts=row.attempts,
            error=row.error,
            report=json.loads(row.report) if row.report else None,
        )


@dataclass(frozen=True)
class JobLogLine:
    id: int
    job_id: str
    at: datetime
    level: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "level": self.level,
            "message": self.message,
        }


def new_job_id() -> str:
    """``j-`` and 16 random hex digits: unguessable, safe in paths and URLs."""
    return "j-" + secrets.token_hex(8)


def check_job_id(value: str) -> str:
    if not (
        isinstance(value, str)
        and len(value) == 18
        and value.startswith("j-")
        and all(c in "0123456789abcdef" for c in value[2:])
    ):
        # Unknown and malformed ids answer alike: there is no such job.
        raise NotFound(f"no job {value[:40]!r}")
    return value


def insert_job(
    conn: sa.Connection,
    spec: str,
    *,
    namespace: str,
    submitter: str,
    priority: Priority = Priority.BATCH,
    cluster: str | None = None,
    schedule_id: int | None = None,
    origin: JobOrigin = JobOrigin.LOCAL,
    note: str | None = None,
) -> str:
    """Insert a new QUEUED job in the caller's transaction; its id.

    The one place a job record is created: :meth:`JobStore.submit` calls it
    in a transaction of its own, a scheduler in the transaction that also
    records the schedule's run, so the two commit (or vanish) together.
    ``note`` is added to the first log line (e.g. the schedule that fired).
    """
    if len(spec.encode()) > MAX_SPEC_BYTES:
        raise InvalidInput(f"the spec is over {MAX_SPEC_BYTES} bytes")
    job_id = new_job_id()
    conn.execute(
        jobs_table.insert().values(
            id=job_id,
            namespace=namespace,
            spec=spec,
            submitter=submitter,
            origin=origin.value,
            priority=priority.name.lower(),
            state=JobState.QUEUED.value,
            cluster=cluster,
            schedule_id=schedule_id,
            shards_done=0,
            rows_in=0,
            rows_out=0,
            dead_letters=0,
            attempts=0,
            submitted_at=utcnow(),
        )
    )
    message = f"submitted by {submitter} ({priority.name.lower()})"
    JobStore._log(conn, job_id, "info", message + (f"; {note}" if note else ""))
    return job_id


class JobStore(DatabaseStore):
    """Job records in a registry database.  Synchronous (database I/O):
    asynchronous callers run its methods in a thread.  Use as a context
    manager or :meth:`close` it when it owns its engine (:meth:`open`)."""

    @classmethod
    def of(cls, registry: Registry) -> JobStore:
        """The store in an open registry's database, on the registry's own engine
        (its pool, SQLite locking and read-only mode)."""
        from ..access._db import engine_of

        return cls(engine_of(registry))

    # -- writing -------------------------------------------------------------

    def submit(
        self,
        spec: str,
        *,
        namespace: str,
        submitter: str,
        priority: Priority = Priority.BATCH,
        cluster: str | None = None,
        schedule_id: int | None = None,
        origin: JobOrigin = JobOrigin.LOCAL,
    ) -> JobRecord:
        """A new QUEUED job.  The spec is stored as given; the caller has checked it."""
        with self._writing() as conn:
            job_id = insert_job(
                conn,
                spec,
                namespace=namespace,
                submitter=submitter,
                priority=priority,
                cluster=cluster,
                schedule_id=schedule_id,
                origin=origin,
            )
        return self.get(job_id)

    def claim(self, runner: str, *, namespaces: Iterable[str] | None = None) -> JobRecord | None:
        """Move the first QUEUED job (by priority class, then age) to RUNNING for ``runner``.

        ``None`` when nothing is queued.  Two runners never claim the same job:
        PostgreSQL skips rows another transaction has locked, SQLite serialises
        writers, and the update itself only moves a job that is still QUEUED.
        """
        order = sa.case(
            {p.name.lower(): p.value for p in Priority}, value=jobs_table.c.priority, else_=9
        )
        query = (
            sa.select(jobs_table.c.id)
            .where(jobs_table.c.state == JobState.QUEUED.value)
            .order_by(order, jobs_table.c.submitted_at, jobs_table.c.id)
            .limit(1)
        )
        if namespaces is not None:
            query = query.where(jobs_table.c.namespace.in_(list(namespaces)))
        with self._writing() as conn:
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            job_id = conn.execute(query).scalar()
            if job_id is None:
                return None
            now = utcnow()
            done = conn.execute(
                jobs_table.update()
                .where(jobs_table.c.id == job_id, jobs_table.c.state == JobState.QUEUED.value)
                .values(
                    state=JobState.RUNNING.value,
                    runner=runner[:128],
                    started_at=now,
                    heartbeat_at=now,
                    finished_at=None,
                    error=None,
                    attempts=jobs_table.c.attempts + 1,
                )
            )
            if done.rowcount != 1:
                return None
            self._log(conn, job_id, "info", f"started by {runner}")
        return self.get(job_id)

    def progress(
        self,
        job_id: str,
        *,
        batch_id: str | None = None,
        out_dir: str | None = None,
        shards_total: int | None = None,
        shards_done: int | None = None,
        rows_in: int | None = None,
        rows_out: int | None = None,
        dead_letters: int | None = None,
    ) -> JobState:
        """Record progress (and a heartbeat) of a job a runner holds; its state now.

        The runner looks at the returned state after every shard: CANCELLING
        means someone asked it to stop.
        """
        given = {
            "batch_id": batch_id,
            "out_dir": out_dir,
            "shards_total": shards_total,
            "shards_done": shards_done,
            "rows_in": rows_in,
            "rows_out": rows_out,
            "dead_letters": dead_letters,
        }
        values: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        values["heartbeat_at"] = utcnow()
        with self._writing() as conn:
            conn.execute(
                jobs_table.update()
                .where(
                    jobs_table.c.id == job_id,
                    jobs_table.c.state.in_([s.value for s in JobState if s.active]),
                )
                .values(**values)
            )
            return self._state(conn, job_id)

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        error: str | None = None,
        report: Mapping[str, Any] | None = None,
    ) -> JobRecord:
        """Move a running job to ``state`` (SUCCEEDED, FAILED, CANCELLED or back to QUEUED)."""
        if state not in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED):
            raise ValueError(f"finish() cannot move a job to {state.value}")
        sources = [s for s in _sources(state) if JobState(s).active]
        values: dict[str, Any] = {"state": state.value, "error": error}
        if state is JobState.QUEUED:
            values |= {"runner": None, "heartbeat_at": None}
        else:
            values["finished_at"] = utcnow()
        if report is not None:
            values["report"] = json.dumps(dict(report), sort_keys=True)
        self._move(job_id, sources, values, state, error)
        return self.get(job_id)

    def cancel(self, job_id: str, *, by: str) -> JobRecord:
        """Cancel a job: a queued one at once, a running one by asking its runner.

        Cancelling a job that is already stopping or cancelled is a no-op;
        one that has finished otherwise is :class:`Conflict`.
        """
        with self._writing() as conn:
            # The update names the state it read: a runner finishing the job
            # (or claiming it) meanwhile makes it match nothing, and the new
            # state is looked at again, never overwritten.
            for _ in range(3):
                state = self._state(conn, job_id)
                if state in (JobState.CANCELLING, JobState.CANCELLED):
                    break
                if state is JobState.QUEUED:
                    values: dict[str, Any] = {
                        "state": JobState.CANCELLED.value,
                        "finished_at": utcnow(),
                    }
                    message = f"cancelled by {by} before it started"
                elif state is JobState.RUNNING:
                    values = {"state": JobState.CANCELLING.value}
                    message = f"cancel requested by {by}"
                else:
                    raise Conflict(f"job {job_id} has already finished ({state.value})")
                done = conn.execute(
                    jobs_table.update()
                    .where(jobs_table.c.id == job_id, jobs_table.c.state == state.value)
                    .values(**values)
                )
                if done.rowcount == 1:
                    self._log(conn, job_id, "info", message)
                    break
            else:
                raise Conflict(f"job {job_id} kept changing state; cancel it again")
        return self.get(job_id)

    def resume(self, job_id: str, *, by: str) -> JobRecord:
        """Queue a FAILED or CANCELLED job again; its finished shards are kept and skipped."""
        values = {"state": JobState.QUEUED.value, "finished_at": None, "runner": None}
        self._move(job_id, _sources(JobState.QUEUED), values, JobState.QUEUED, None, by=by)
        return self.get(job_id)

    def requeue_stale(self, older_than: timedelta) -> list[str]:
        """Queue again the RUNNING / CANCELLING jobs whose runner has been silent for
        ``older_than`` (it died); a CANCELLING one is cancelled instead."""
        limit = utcnow() - older_than
        moved: list[str] = []
        with self._writing() as conn:
            rows = conn.execute(
                sa.select(jobs_table.c.id, jobs_table.c.state, jobs_table.c.runner).where(
                    jobs_table.c.state.in_([s.value for s in JobState if s.active]),
                    jobs_table.c.heartbeat_at < limit,
                )
            ).all()
            for row in rows:
                cancelling = row.state == JobState.CANCELLING.value
                target = JobState.CANCELLED if cancelling else JobState.QUEUED
                values: dict[str, Any] = {"state": target.value, "runner": None}
                if cancelling:
                    values["finished_at"] = utcnow()
                done = conn.execute(
                    jobs_table.update()
                    .where(
                        jobs_table.c.id == row.id,
                        jobs_table.c.state == row.state,
                        # A beat committed since the select: the runner lives.
                        jobs_table.c.heartbeat_at < limit,
                    )
                    .values(**values)
                )
                if done.rowcount != 1:
                    continue
                self._log(
                    conn,
                    row.id,
                    "warning",
                    f"runner {row.runner} stopped answering; job {target.value.lower()}",
                )
                moved.append(row.id)
        return moved

    def log(self, job_id: str, message: str, *, level: str = "info") -> None:
        with self._writing() as conn:
            self._log(conn, job_id, level, message)

    # -- reading -------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        check_job_id(job_id)
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(jobs_table).where(jobs_table.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        return JobRecord._from_row(row)

    def find(
        self,
        *,
        namespaces: Iterable[str] | None = None,
        states: Iterable[JobState] | None = None,
        schedule_id: int | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        """Newest first; ``namespaces=None`` means all of them."""
        query = sa.select(jobs_table).order_by(
            jobs_table.c.submitted_at.desc(), jobs_table.c.id.desc()
        )
        if namespaces is not None:
            query = query.where(jobs_table.c.namespace.in_(list(namespaces)))
        if states is not None:
            query = query.where(jobs_table.c.state.in_([s.value for s in states]))
        if schedule_id is not None:
            query = query.where(jobs_table.c.schedule_id == schedule_id)
        query = query.limit(max(1, min(limit, 10_000)))
        with self._engine.connect() as conn:
            return [JobRecord._from_row(row) for row in conn.execute(query)]

    def logs(self, job_id: str, *, after: int = 0, limit: int = 1000) -> list[JobLogLine]:
        """The job's log lines with id > ``after``, oldest first."""
        from ..access._db import aware

        self.get(job_id)
        query = (
            sa.select(job_log_table)
            .where(job_log_table.c.job_id == job_id, job_log_table.c.id > after)
            .order_by(job_log_table.c.id)
            .limit(max(1, min(limit, 10_000)))
        )
        with self._engine.connect() as conn:
            return [
                JobLogLine(r.id, r.job_id, aware(r.at), r.level, r.message)
                for r in conn.execute(query)
            ]

    # -- internals -----------------------------------------------------------

    def _writing(self) -> Any:
        from ..access._db import writing

        return writing(self._engine)

    @staticmethod
    def _state(conn: sa.Connection, job_id: str) -> JobState:
        check_job_id(job_id)
        state = conn.execute(
            sa.select(jobs_table.c.state).where(jobs_table.c.id == job_id)
        ).scalar()
        if state is None:
            raise NotFound(f"no job {job_id!r}")
        return JobState(state)

    def _move(
        self,
        job_id: str,
        sources: list[str],
        values: dict[str, Any],
        target: JobState,
        error: str | None,
        *,
        by: str | None = None,
    ) -> None:
        with self._writing() as conn:
            state = self._state(conn, job_id)
            done = conn.execute(
                jobs_table.update()
                .where(jobs_table.c.id == job_id, jobs_table.c.state.in_(sources))
                .values(**values)
            )
            if done.rowcount != 1:
                raise Conflict(f"job {job_id} is {state.value}; it cannot become {target.value}")
            what = f"{state.value} → {target.value}" + (f" by {by}" if by else "")
            self._log(
                conn, job_id, "error" if error else "info", what + (f": {error}" if error else "")
            )

    @staticmethod
    def _log(conn: sa.Connection, job_id: str, level: str, message: str) -> None:
        if level not in _LEVELS:
            raise ValueError(f"unknown log level {level!r}")
        if len(message) > MAX_LOG_MESSAGE:
            message = message[:MAX_LOG_MESSAGE] + " …[cut]"
        conn.execute(
            job_log_table.insert().values(job_id=job_id, at=utcnow(), level=level, message=message)
        )
