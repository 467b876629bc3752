"""``sciserve jobs``: batch jobs recorded in the registry database.

Without ``--server`` the commands work on the registry database directly,
as its local user: ``submit`` checks and plans the spec here (models,
input files, filter) and stores it with every path absolute, so a runner
anywhere reads the same files.  With ``--server URL`` (``SCISERVE_URL``)
they go through the server's jobs API (:class:`~sciserve.jobs.remote.RemoteJobs`),
under its access rules: the spec's locations are then the server's, under
its ``[jobs] archives`` roots.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import Settings
from ..errors import InvalidInput, SciserveError
from ..jobs.records import JobState, JobStore, parse_states
from ..jobs.remote import RemoteJobs
from ._context import State, exit_code_for, folding_table, local_actor, state

__all__ = ["register"]

#: Log lines fetched per request while following (a page of the store's).
_LOG_PAGE = 1000


def register(app: typer.Typer) -> typer.Typer:
    """Add the ``jobs`` group to the ``sciserve`` command line; returns it, so
    other modules can add their commands (the runner) to the same group."""
    jobs = typer.Typer(
        name="jobs",
        help="Batch jobs in the registry database: submit, watch, cancel, resume.",
        no_args_is_help=True,
    )
    jobs.command("submit")(submit)
    jobs.command("list")(list_jobs)
    jobs.command("status")(status)
    jobs.command("logs")(logs)
    jobs.command("cancel")(cancel)
    jobs.command("resume")(resume)
    app.add_typer(jobs, name="jobs")
    return jobs


class _LocalJobs:
    """The operations of :class:`RemoteJobs` on the registry database, as its local user."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = JobStore.open(settings, create=False)
        self.actor = local_actor()

    def close(self) -> None:
        self.store.close()

    def submit_file(
        self, path: Path, *, namespace: str | None, cluster: str | None, priority: str | None
    ) -> dict[str, Any]:
        from ..access.audit import audit
        from ..access.priority import Priority, parse_priority
        from ..batch.job import BatchJob
        from ..jobs.submission import local_spec, model_references
        from ..registry.registry import Registry

        checked = local_spec(path)
        job_namespace = namespace or model_references(checked.spec)[0].namespace
        if cluster is not None:
            self.settings.cluster(cluster)
        rank = parse_priority(priority) if priority is not None else Priority.BATCH
        settings = self.settings
        # Every check a run makes before it starts, made now: a spec that
        # cannot run is refused here rather than failing in a runner later.
        BatchJob(checked.spec, settings, settings.jobs.out or settings.home / "batch").plan()
        with Registry(settings, create=False) as registry:
            registry.namespace(job_namespace)
        record = self.store.submit(
            checked.text,
            namespace=job_namespace,
            submitter=self.actor,
            priority=rank,
            cluster=cluster,
        )
        audit(self.store.engine, "job.submit", record.id, self.actor, {"namespace": job_namespace})
        return record.to_dict()

    def find(
        self, *, state: str | None = None, namespace: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        states = parse_states(state) if state is not None else None
        namespaces = [namespace] if namespace is not None else None
        found = self.store.find(namespaces=namespaces, states=states, limit=limit or 100)
        return [record.to_dict(spec=False) for record in found]

    def get(self, job_id: str) -> dict[str, Any]:
        return self.store.get(job_id).to_dict()

    def logs(self, job_id: str, *, after: int = 0) -> list[dict[str, Any]]:
        return [line.to_dict() for line in self.store.logs(job_id, after=after)]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._audited("job.cancel", self.store.cancel(job_id, by=self.actor).to_dict())

    def resume(self, job_id: str) -> dict[str, Any]:
        return self._audited("job.resume", self.store.resume(job_id, by=self.actor).to_dict())

    def _audited(self, action: str, record: dict[str, Any]) -> dict[str, Any]:
        from ..access.audit import audit

        detail = {"namespace": record["namespace"], "state": record["state"]}
        audit(self.store.engine, action, record["id"], self.actor, detail)
        return record


Jobs = _LocalJobs | RemoteJobs


@contextlib.contextmanager
def _jobs(st: State) -> Iterator[Jobs]:
    """The jobs of a remote server (``--server`` / ``SCISERVE_URL``) or of the local database."""
    settings = st.settings
    if settings.server_url:
        with RemoteJobs(settings.server_url, headers=settings.auth_headers()) as remote:
            yield remote
        return
    local = _LocalJobs(settings)
    try:
        yield local
    finally:
        local.close()


# -- commands ------------------------------------------------------------------


def submit(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="Batch spec (YAML).", show_default=False)],
    namespace: Annotated[
        str | None,
        typer.Option(help="The job's namespace [default: that of the spec's first model]."),
    ] = None,
    cluster: Annotated[
        str | None, typer.Option(help="Run on a cluster profile ([clusters.NAME]).")
    ] = None,
    priority: Annotated[
        str | None,
        typer.Option(
            help="realtime, interactive or batch [default: batch here; on a server, the "
            "class of your token, which this may only lower]."
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Wait until the job has finished; exit 1 unless it succeeded."),
    ] = False,
) -> None:
    """Queue a batch job; a runner ('sciserve serve' runs one) executes it.

    Here, the spec is checked and planned first (models, input files,
    filter) and stored with its paths absolute.  With --server, the server
    checks it: its input must be under the server's [jobs] archives.
    """
    st = state(ctx)
    with _jobs(st) as jobs:
        if isinstance(jobs, RemoteJobs):
            record = jobs.submit(
                _read_spec(spec), namespace=namespace, cluster=cluster, priority=priority
            )
        else:
            record = jobs.submit_file(spec, namespace=namespace, cluster=cluster, priority=priority)
        if not wait:
            st.emit(
                record,
                lambda: st.console.print(
                    f"job {record['id']} {record['state']} in namespace {record['namespace']} "
                    f"({record['priority']})"
                ),
            )
            return
        if not st.json:
            st.err.print(f"job {record['id']} submitted; waiting for it to finish")
        record = _wait(jobs, record["id"], _interval(st))
    _show(st, record)
    _fail_unless_succeeded(record)


def list_jobs(
    ctx: typer.Context,
    state_filter: Annotated[
        str | None,
        typer.Option("--state", help="Only jobs in these states, e.g. RUNNING or QUEUED,RUNNING."),
    ] = None,
    namespace: Annotated[str | None, typer.Option(help="Only jobs of this namespace.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.", min=1)] = 100,
) -> None:
    """The jobs (that you may see), newest first."""
    st = state(ctx)
    if state_filter is not None:
        parse_states(state_filter)  # a typo fails here, the same way for both modes
    with _jobs(st) as jobs:
        found = jobs.find(state=state_filter, namespace=namespace, limit=limit)

    def human() -> None:
        if not found:
            st.console.print("no jobs")
            return
        rows = [
            [
                job["id"],
                job["state"],
                job["namespace"],
                job["priority"],
                f"{job['shards_done']}/{_or_unknown(job['shards_total'])}",
                str(job["submitted_at"])[:16].replace("T", " "),
                job["submitter"],
            ]
            for job in found
        ]
        headers = ["ID", "STATE", "NAMESPACE", "PRIORITY", "SHARDS", "SUBMITTED", "SUBMITTER"]
        # Ids and times are kept whole; names wrap first on a narrow terminal.
        fixed = {"ID", "STATE", "SHARDS", "SUBMITTED"}
        st.console.print(folding_table(headers, rows, width=st.console.width, fixed=fixed))

    st.emit({"jobs": found}, human)


def status(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job id (j-…).", show_default=False)],
) -> None:
    """One job: its state, progress, error and report."""
    st = state(ctx)
    with _jobs(st) as jobs:
        record = jobs.get(job_id)
    _show(st, record)


def logs(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job id (j-…).", show_default=False)],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the job ends.")
    ] = False,
) -> None:
    """The job's log: submission, starts, progress, errors."""
    st = state(ctx)
    seen: list[dict[str, Any]] = []
    with _jobs(st) as jobs:
        after = 0
        while True:
            # The state first: every line logged before it became final is read below.
            ended = not follow or JobState(jobs.get(job_id)["state"]).terminal
            while True:
                page = jobs.logs(job_id, after=after)
                for line in page:
                    after = max(after, int(line["id"]))
                    if not st.json:
                        _print_line(st, line)
                seen += page
                if len(page) < _LOG_PAGE:
                    break
            if ended:
                break
            time.sleep(_interval(st))
    if st.json:
        st.emit({"lines": seen}, lambda: None)


def cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job id (j-…).", show_default=False)],
) -> None:
    """Cancel a job: a queued one at once, a running one after its current shard
    (its finished shards are kept: resume picks it up there)."""
    st = state(ctx)
    with _jobs(st) as jobs:
        record = jobs.cancel(job_id)
    st.emit(record, lambda: st.console.print(f"job {record['id']}: {record['state']}"))


def resume(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="The job id (j-…).", show_default=False)],
) -> None:
    """Queue a failed or cancelled job again; its finished shards are skipped."""
    st = state(ctx)
    with _jobs(st) as jobs:
        record = jobs.resume(job_id)
    st.emit(record, lambda: st.console.print(f"job {record['id']}: {record['state']}"))


# -- helpers -------------------------------------------------------------------


def _read_spec(path: Path) -> str:
    from ..jobs.records import MAX_SPEC_BYTES

    try:
        with path.open("rb") as source:
            raw = source.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read batch spec {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_SPEC_BYTES:
        raise InvalidInput(f"batch spec {path} is over {MAX_SPEC_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"batch spec {path} is not UTF-8 text") from exc


def _or_unknown(value: object) -> str:
    return "?" if value is None else str(value)


def _interval(st: State) -> float:
    return st.settings.jobs.poll_interval


def _wait(jobs: Jobs, job_id: str, interval: float) -> dict[str, Any]:
    """Poll the job until it has finished (the records live in a database:
    there is nothing to wait on but its rows)."""
    while True:
        record = jobs.get(job_id)
        if JobState(record["state"]).terminal:
            return record
        time.sleep(interval)


def _fail_unless_succeeded(record: dict[str, Any]) -> None:
    if record["state"] != JobState.SUCCEEDED.value:
        # Not a failure of this command, but of the job it waited for.
        raise typer.Exit(code=exit_code_for(SciserveError()))


_STATUS_FIELDS = (
    "id",
    "namespace",
    "state",
    "priority",
    "submitter",
    "cluster",
    "schedule_id",
    "batch_id",
    "out_dir",
    "shards_total",
    "shards_done",
    "rows_in",
    "rows_out",
    "dead_letters",
    "attempts",
    "runner",
    "submitted_at",
    "started_at",
    "finished_at",
    "heartbeat_at",
    "error",
)


def _show(st: State, record: dict[str, Any]) -> None:
    def human() -> None:
        for key in _STATUS_FIELDS:
            value = record.get(key)
            if value is not None:
                st.console.print(f"{key}: {value}", markup=False, soft_wrap=True)
        if record.get("report"):
            st.console.print(
                f"report: {json.dumps(record['report'], sort_keys=True)}",
                markup=False,
                soft_wrap=True,
            )

    st.emit(record, human)


def _print_line(st: State, line: dict[str, Any]) -> None:
    at = str(line.get("at", ""))[:19].replace("T", " ")
    st.console.print(
        f"{at} {str(line.get('level', '')).upper():7} {line.get('message', '')}",
        markup=False,
        soft_wrap=True,
    )
