"""What is wrong with a server, and what to do about it.

:func:`check_health` looks at the parts a server depends on and returns a
:class:`HealthReport`: one :class:`Problem` per thing that is wrong, each
with what to do.  Both the dashboard's health page and the JSON endpoint
``GET /v2/sciserve/health`` show it.

It is a report for people, not a probe: ``/v2/health/live`` and
``/v2/health/ready`` stay the probes for load balancers.  What a caller is
shown follows what it may see: models and jobs of its namespaces only, and
the server's own errors (database, store) in words only an admin gets.
"""

from __future__ import annotations

import asyncio
import enum
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from ...access.identity import ANY_NAMESPACE, Identity
from ...jobs.records import JobRecord, JobState, JobStore
from ...serving.lifecycle import ModelState
from ...serving.service import InferenceService
from ...streams.metrics import read_statuses
from .._messages import client_message

__all__ = ["HealthReport", "Problem", "Status", "check_health"]

#: Free space under the server's home below this is a problem.
MIN_FREE_BYTES: Final = 1 << 30
MIN_FREE_FRACTION: Final = 0.05
#: Failed jobs finished this recently are a problem.
RECENT_FAILURES: Final = timedelta(hours=24)
#: Most failed jobs one report lists.
MAX_FAILED_JOBS: Final = 10
#: A digest no artifact has: asking the store for it tells whether it answers.
_PROBE_DIGEST: Final = "0" * 64


class Status(enum.Enum):
    """How a server is, from the worst of its problems."""

    OK = "ok"
    DEGRADED = "degraded"  # serving, but something needs attention
    FAILING = "failing"  # a part every request needs is down


@dataclass(frozen=True)
class Problem:
    """One thing that is wrong: which part, what, and what to do."""

    component: str
    message: str
    action: str
    severity: Status = Status.DEGRADED

    def to_dict(self) -> dict[str, str]:
        return {
            "component": self.component,
            "severity": self.severity.value,
            "message": self.message,
            "action": self.action,
        }


@dataclass(frozen=True)
class ModelHealth:
    """One served model version (or a served name with none loaded)."""

    served: str
    namespace: str
    version: str
    state: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {
            "name": self.served,
            "namespace": self.namespace,
            "version": self.version,
            "state": self.state,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class HealthReport:
    checked_at: datetime
    problems: list[Problem] = field(default_factory=list)
    models: list[ModelHealth] = field(default_factory=list)
    #: Parts looked at, each ``"ok"`` or ``"problem"``.
    checks: dict[str, str] = field(default_factory=dict)
    #: Parts not watched here yet, and why.
    not_checked: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        if any(p.severity is Status.FAILING for p in self.problems):
            return Status.FAILING
        return Status.DEGRADED if self.problems else Status.OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "checked_at": self.checked_at.isoformat(),
            "problems": [p.to_dict() for p in self.problems],
            "checks": dict(self.checks),
            "not_checked": dict(self.not_checked),
            "models": [m.to_dict() for m in self.models],
        }


def _detail(identity: Identity, exc: BaseException) -> str:
    # The server's own errors name hosts, URLs and paths: for admins only.
    if identity.is_admin:
        return f": {client_message(str(exc), 300)}"
    return ""


async def check_health(service: InferenceService, identity: Identity) -> HealthReport:
    """Look at everything ``identity`` may know about and report what is wrong."""
    problems: list[Problem] = []
    checks: dict[str, str] = {}

    async def check(name: str, probe: Any, problem: Any) -> None:
        try:
            await asyncio.to_thread(probe)
        except Exception as exc:  # any failure of the part is the finding
            problems.append(problem(exc))
            checks[name] = "problem"
        else:
            checks[name] = "ok"

    registry = service.registry
    await check(
        "database",
        registry.namespaces,
        lambda exc: Problem(
            "database",
            f"the registry database is unreachable{_detail(identity, exc)}",
            "check that the database server runs and that database_url in sciserve.toml "
            "points at it; models already loaded keep serving meanwhile",
            Status.FAILING,
        ),
    )
    await check(
        "artifact_store",
        lambda: registry.store.has(_PROBE_DIGEST),
        lambda exc: Problem(
            "artifact_store",
            f"the artifact store is unreachable{_detail(identity, exc)}",
            "check the store (store_url in sciserve.toml) and its credentials; "
            "models already loaded keep serving, new versions cannot load",
            Status.FAILING,
        ),
    )
    disk = await asyncio.to_thread(_disk_problem, registry.settings.home, identity)
    checks["disk"] = "ok" if disk is None else "problem"
    if disk is not None:
        problems.append(disk)

    models = _models(service, identity)
    for model in models:
        if model.state == ModelState.FAILED.value:
            problems.append(
                Problem(
                    "model",
                    f"model {model.served} version {model.version} failed to load: "
                    f"{client_message(model.reason, 500)}",
                    "fix the cause and publish a new version (sciserve publish), or yank the "
                    "broken one so the server falls back to the previous version; "
                    "the server log has the details",
                )
            )
    checks["models"] = (
        "ok" if all(m.state != ModelState.FAILED.value for m in models) else "problem"
    )
    drifting = _drift_problems(service, models)
    if drifting is not None:
        checks["drift"] = "problem" if drifting else "ok"
        problems += drifting

    not_checked = {
        "stream_lag": "pipelines declare no lag budget yet; their lag is on /streams",
    }
    if drifting is None:
        not_checked["drift"] = "monitoring is off on this server ([monitoring] enabled = false)"
    failed: list[JobRecord] = []
    if checks["database"] == "ok":
        try:
            failed = await asyncio.to_thread(_failed_jobs, service, identity)
        except Exception:  # the database went away between the two checks
            not_checked["jobs"] = "jobs live in the registry database, which is unreachable"
        else:
            checks["jobs"] = "problem" if failed else "ok"
    else:
        not_checked["jobs"] = "jobs live in the registry database, which is unreachable"
    for job in failed:
        problems.append(
            Problem(
                "job",
                f"job {job.id} in namespace {job.namespace} failed: "
                f"{client_message(job.error or 'no error recorded', 500)}",
                f"read its log (sciserve jobs logs {job.id}), fix the cause and resume it "
                f"(sciserve jobs resume {job.id}); dead letters hold the rows that failed",
            )
        )
    if identity.is_admin:
        streams = await asyncio.to_thread(_stream_problems, registry.settings.home)
        checks["streams"] = "problem" if streams else "ok"
        problems += streams
    else:
        not_checked["streams"] = "stream workers are shown to admins only"
    return HealthReport(
        checked_at=datetime.now(UTC),
        problems=problems,
        models=models,
        checks=checks,
        not_checked=not_checked,
    )


def _stream_problems(home: Any) -> list[Problem]:
    """Pipeline workers that died without stopping, or failed, by their status files."""
    problems = []
    for worker in read_statuses(home):
        where = f"pipeline {worker.name} (pid {worker.pid} on {worker.host})"
        if worker.stale:
            problems.append(
                Problem(
                    "stream",
                    f"{where} is gone without having stopped: alerts are not being consumed",
                    "start it again (sciserve stream run SPEC): it resumes from the last "
                    "committed offset; its old status file stays until then",
                )
            )
        elif worker.state == "failed":
            problems.append(
                Problem(
                    "stream",
                    f"{where} failed",
                    "read its log, fix the cause and start it again (sciserve stream run SPEC)",
                )
            )
    return problems


def _drift_problems(service: InferenceService, models: list[ModelHealth]) -> list[Problem] | None:
    """A problem per shown model version whose drift alert is raised
    (``None`` when the server does not monitor its traffic)."""
    monitor = service.monitor
    if monitor is None:
        return None
    problems = []
    for status in monitor.status([(m.served, m.version) for m in models]):
        if status["state"] != "alerting":
            continue
        started = status.get("alert_started_at")
        since = (
            ""
            if started is None
            else f" since {datetime.fromtimestamp(float(started), UTC):%Y-%m-%d %H:%M:%S} UTC"
        )
        scores = ", ".join(
            f"{b['name']} ({b['kind']} {float(b['score']):.3g} > {float(b['threshold']):.3g})"
            for b in status.get("breaches", [])
        )
        problems.append(
            Problem(
                "drift",
                f"the traffic of model {status['model']} version {status['version']} has "
                f"drifted from its reference{since}" + (f": {scores}" if scores else ""),
                "look at what changed upstream of the model (its page shows the features "
                "that moved); if the change is expected and the model still fits it, store "
                f"a new reference (POST /v2/sciserve/monitoring/{status['model']}/reference "
                "or sciserve monitor reference), else retrain it or roll back",
            )
        )
    return problems


def _disk_problem(home: Any, identity: Identity) -> Problem | None:
    try:
        usage = shutil.disk_usage(home)
    except OSError as exc:
        return Problem(
            "disk",
            f"cannot tell the free space of the server's home{_detail(identity, exc)}",
            "check that the home directory exists and is readable",
        )
    if usage.free >= min(MIN_FREE_BYTES, usage.total * MIN_FREE_FRACTION):
        return None
    return Problem(
        "disk",
        f"the disk of the server's home is nearly full: {usage.free / 2**30:.2f} GiB free "
        f"of {usage.total / 2**30:.1f} GiB",
        "free space (old job outputs, the package cache under the home) or move the "
        "home to a larger disk; publishing and jobs fail when it is full",
        Status.FAILING if usage.free < MIN_FREE_BYTES // 10 else Status.DEGRADED,
    )


def _models(service: InferenceService, identity: Identity) -> list[ModelHealth]:
    shown = []
    for row in service.manager.index():
        found = service.manager.identify(row["name"])
        if found is None or not identity.can_see(found[0]):
            continue
        shown.append(
            ModelHealth(row["name"], found[0], row["version"], row["state"], row["reason"] or "")
        )
    return shown


def _failed_jobs(service: InferenceService, identity: Identity) -> list[JobRecord]:
    namespaces: list[str] | None
    if identity.can_see(ANY_NAMESPACE):
        namespaces = None
    else:
        namespaces = [ns for ns in identity.scopes if ns != ANY_NAMESPACE and identity.can_see(ns)]
        if not namespaces:
            return []
    store = JobStore.of(service.registry)
    since = datetime.now(UTC) - RECENT_FAILURES
    records = store.find(namespaces=namespaces, states=[JobState.FAILED], limit=MAX_FAILED_JOBS)
    return [r for r in records if r.finished_at is None or _aware(r.finished_at) >= since]


def _aware(moment: datetime) -> datetime:
    # The registry stores UTC; some databases hand it back without a zone.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
