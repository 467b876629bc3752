"""The job runner: executes the batch job records of the registry database.

A :class:`JobRunner` claims a QUEUED job (:meth:`JobStore.claim
<sciserve.jobs.records.JobStore.claim>`: by priority class, then age; two
runners never claim the same one), plans it as ``sciserve batch run`` does,
runs it on a Dask cluster of its own (a local one on 127.0.0.1 whose
workers run at a lower CPU priority, or the job's cluster profile) and
records how it went: progress and a log line per shard, then SUCCEEDED with
the batch report, or FAILED with the error (one clear message, never a
traceback).

While a job runs, a watcher thread beats its heartbeat every
``[jobs] poll_interval`` and looks at its state, so that

* a cancel (CANCELLING) stops it within a poll interval even when a shard
  is long: the Dask tasks are cancelled, the cluster closed (its workers
  freed) and the job CANCELLED.  The shards finished so far keep their
  (atomically written) output; :meth:`JobStore.resume` queues the job
  again and the next run skips them;
* a runner told to stop (its ``stop`` event: SIGTERM for ``sciserve jobs
  runner``) puts the job back to QUEUED, for another runner to resume;
* a runner that dies without a word (SIGKILL, a lost machine) stops beating:
  another runner's :meth:`JobStore.requeue_stale` queues its job again
  after ``[jobs] stale_after`` seconds.

Two records of the same batch (the same spec over the same input: the same
``batch_id`` and output directory) never run at once, as two runs of one
batch would redo and remove each other's files: a runner records the
batch id, then looks for another active record holding it, and if it finds
one the job FAILS at once with a message naming that job (resume it once
the other has finished; its finished shards are then skipped).  Failing
rather than waiting keeps the queue moving and cannot spin: a job put back
to QUEUED would be claimed again at once, before any other.

A spec is stored as text, so relative paths in it have no directory of
their own: they resolve against the first ``[jobs] archives`` root when it
is a local directory (and may not lead out of it), and are refused otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from .. import _yaml
from ..config import Settings
from ..errors import Conflict, InvalidInput, ReadOnlyRegistry, SciserveError, Unavailable
from ..jobs.records import JobOrigin, JobRecord, JobState, JobStore
from ..streams.spec import BatchSpec, parse_batch_spec
from .executor import cluster_client, dask_client
from .job import BatchJob, JobReport
from .worker import ShardResult

__all__ = ["JobRunner"]

logger = logging.getLogger(__name__)

#: How often (s) a running job's watcher looks at the runner's stop event.
_TICK = 0.1
#: The lowest CPU priority (highest nice value).
_LOWEST = 19
#: Most worker processes a runner's local cluster may have (as ``[jobs] workers``).
MAX_WORKERS = 1024


@dataclass
class _Run:
    """One job in the hands of this runner: what stops it, and how far it got."""

    record: JobRecord
    stop: threading.Event
    #: Someone asked for the job to stop (it is CANCELLING).
    cancelled: threading.Event
    #: Another runner took the job over (it was re-queued while we ran it).
    lost: threading.Event
    done: threading.Event
    job: BatchJob | None = None
    shards_done: int = 0
    rows_in: int = 0
    rows_out: int = 0
    dead_letters: int = 0

    @property
    def interrupted(self) -> bool:
        return self.cancelled.is_set() or self.stop.is_set() or self.lost.is_set()

    def interrupt(self) -> None:
        if self.job is not None:
            self.job.cancel()


class JobRunner:
    """Executes job records of the registry database of ``settings``.

    ``name`` identifies this runner in the records (default: host, process
    id and a random suffix); ``workers`` sizes the local Dask cluster each
    job gets (default: ``[jobs] workers``, else the cores).  Close it (or use
    it as a context manager) to release its database connections.
    """

    def __init__(
        self, settings: Settings, *, name: str | None = None, workers: int | None = None
    ) -> None:
        if settings.read_only:
            raise ReadOnlyRegistry(
                "a job runner records its jobs' progress: not on a read-only registry"
            )
        if workers is not None and not 1 <= workers <= MAX_WORKERS:
            raise InvalidInput(f"a runner needs 1 to {MAX_WORKERS} workers, not {workers}")
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self.workers = workers or settings.jobs.workers or os.cpu_count() or 1
        self.store = JobStore.open(settings)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> JobRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop --------------------------------------------------------------

    def run_once(self, stop: threading.Event | None = None) -> JobRecord | None:
        """Re-queue the jobs of dead runners, claim one job and run it to the
        end; the job as it ended, or ``None`` when none was queued.  Setting
        ``stop`` meanwhile puts the job back to QUEUED."""
        stale = self.store.requeue_stale(timedelta(seconds=self.settings.jobs.stale_after))
        for job_id in stale:
            logger.warning("job %s: its runner stopped answering; re-queued", job_id)
        record = self.store.claim(self.name)
        if record is None:
            return None
        logger.info("job %s: started (%s)", record.id, record.priority.name.lower())
        run = _Run(
            record,
            stop or threading.Event(),
            threading.Event(),
            threading.Event(),
            threading.Event(),
        )
        watcher = threading.Thread(
            target=self._watch, args=(run,), name=f"sciserve-job-{record.id}", daemon=True
        )
        watcher.start()
        try:
            return self._execute(run)
        finally:
            run.done.set()
            watcher.join()

    def serve_forever(self, stop: threading.Event) -> None:
        """Run jobs until ``stop`` is set, looking at the queue every
        ``[jobs] poll_interval`` when it is empty.  A failing database does
        not end the loop: it is logged and tried again."""
        interval = self.settings.jobs.poll_interval
        logger.info("job runner %s: %d local worker(s) per job", self.name, self.workers)
        if self.settings.jobs.stale_after < 2 * interval:
            # A heartbeat every poll interval: a shorter silence is no sign of death.
            logger.warning(
                "[jobs] stale_after (%g s) is under two poll intervals (%g s): "
                "runners that are alive may lose their jobs",
                self.settings.jobs.stale_after,
                2 * interval,
            )
        while not stop.is_set():
            try:
                record = self.run_once(stop)
            except Exception as exc:  # the database went away, say: try again later
                logger.error("job runner %s: %s: %s", self.name, type(exc).__name__, exc)
                record = None
            if record is None:
                stop.wait(interval)
        logger.info("job runner %s: stopped", self.name)

    # -- one job ---------------------------------------------------------------

    def _watch(self, run: _Run) -> None:
        """Beat the job's heartbeat and look at its state every poll interval;
        stop the run when it is cancelled, the runner stops, or the job is lost."""
        interval = self.settings.jobs.poll_interval
        # The stop event is looked at more often than the database.
        tick = min(interval, _TICK)
        next_beat = time.monotonic() + interval
        stopping = False
        while not run.done.wait(tick):
            if run.stop.is_set() and not stopping:
                stopping = True
                run.interrupt()
            if time.monotonic() < next_beat:
                continue
            next_beat = time.monotonic() + interval
            try:
                state = self.store.progress(run.record.id)
            except Exception as exc:  # a database hiccup: the next beat may get through
                logger.warning("job %s: heartbeat failed: %s", run.record.id, exc)
                continue
            self._look(run, state)

    def _look(self, run: _Run, state: JobState) -> None:
        if state is JobState.CANCELLING and not run.cancelled.is_set():
            run.cancelled.set()
            run.interrupt()
        elif not state.active and not run.lost.is_set():
            run.lost.set()
            run.interrupt()

    def _execute(self, run: _Run) -> JobRecord:
        record = run.record
        try:
            report = self._run(run)
        except Exception as exc:
            if run.lost.is_set():
                return self._lost(record)
            if run.job is not None and run.job.out_dir.is_dir():
                # Shards already running when the job was stopped may have
                # finished before their workers were: what is on disk counts.
                with contextlib.suppress(Exception):
                    self._tally(run, run.job)
                    self.store.progress(
                        record.id,
                        shards_done=run.shards_done,
                        rows_in=run.rows_in,
                        rows_out=run.rows_out,
                        dead_letters=run.dead_letters,
                    )
            if run.cancelled.is_set():
                return self._finish(record, JobState.CANCELLED, message="cancelled")
            if run.stop.is_set():
                return self._finish(
                    record, JobState.QUEUED, message="the runner stopped; job queued again"
                )
            return self._finish(record, JobState.FAILED, error=_describe(exc))
        if run.lost.is_set():
            return self._lost(record)
        self.store.progress(
            record.id,
            shards_done=report.shards,
            rows_in=report.rows,
            rows_out=report.outputs,
            dead_letters=report.dead_letters,
        )
        self.store.log(
            record.id,
            f"verified: {report.shards} shards ({len(report.ran)} run, "
            f"{len(report.skipped)} already done); {report.rows} rows in, "
            f"{report.outputs} output rows, {report.dead_letters} dead letters",
        )
        return self._finish(record, JobState.SUCCEEDED, report=report.to_dict())

    def _finish(
        self,
        record: JobRecord,
        state: JobState,
        *,
        error: str | None = None,
        message: str | None = None,
        report: dict[str, Any] | None = None,
    ) -> JobRecord:
        if message is not None:
            self.store.log(record.id, message)
        try:
            done = self.store.finish(record.id, state, error=error, report=report)
        except Conflict as exc:  # re-queued as stale, or otherwise moved on meanwhile
            logger.warning("job %s: %s", record.id, exc)
            return self.store.get(record.id)
        logger.info("job %s: %s%s", record.id, state.value, f": {error}" if error else "")
        return done

    def _lost(self, record: JobRecord) -> JobRecord:
        now = self.store.get(record.id)
        logger.warning(
            "job %s: taken from this runner (it is %s); its run stopped", record.id, now.state.value
        )
        return now

    def _run(self, run: _Run) -> JobReport:
        record = run.record
        job = self._plan(record)
        run.job = job
        self._tally(run, job)
        self.store.progress(
            record.id,
            batch_id=job.job_id,
            out_dir=str(job.out_dir),
            shards_total=len(job.shards),
            shards_done=run.shards_done,
            rows_in=run.rows_in,
            rows_out=run.rows_out,
            dead_letters=run.dead_letters,
        )
        self._refuse_twins(record, job.job_id)
        self.store.log(
            record.id,
            f"planned batch {job.job_id}: {len(job.shards)} shards "
            f"({run.shards_done} already done), output in {job.out_dir}",
        )
        if run.interrupted:  # before a cluster starts for nothing
            job.cancel()
            raise Unavailable(f"job {record.id} stopped before its cluster started")
        with self._cluster(record, job) as client:
            return job.run(client, self._on_shard(run))

    @staticmethod
    def _tally(run: _Run, job: BatchJob) -> None:
        """Count the shards finished on disk (and their rows) into ``run``."""
        pending = {s.id for s in job.pending()}
        run.shards_done = run.rows_in = run.rows_out = run.dead_letters = 0
        for shard in job.shards:
            if shard.id in pending:
                continue
            doc = json.loads((job.out_dir / f"shard-{shard.id}.json").read_text())
            run.shards_done += 1
            run.rows_in += doc["rows"]
            run.rows_out += doc["outputs"]
            run.dead_letters += doc["dead_letters"]

    def _plan(self, record: JobRecord) -> BatchJob:
        spec = self._spec(record)
        out = self.settings.jobs.out or self.settings.home / "batch"
        job = BatchJob(spec, self.settings, out, priority=record.priority)
        job.plan()  # every check before a cluster starts
        return job

    def _spec(self, record: JobRecord) -> BatchSpec:
        try:
            data = _yaml.load(record.spec, what="a batch spec")
        except yaml.YAMLError as exc:
            raise InvalidInput(f"the spec of job {record.id} is not valid YAML: {exc}") from exc
        if record.origin is JobOrigin.API:
            # Checked when it was submitted; checked again now, as what the
            # archives hold (links included) may have changed since.
            from ..jobs.archives import Archives
            from ..jobs.submission import api_spec, spec_document

            return api_spec(spec_document(data), Archives(self.settings.jobs.archives)).spec
        base = self._base_dir()
        _check_relative(data, base)
        return parse_batch_spec(data, base_dir=base, source=f"job {record.id}")

    def _base_dir(self) -> Path | None:
        roots = self.settings.jobs.archives
        if roots and "://" not in roots[0] and Path(roots[0]).is_dir():
            return Path(roots[0])
        return None

    def _refuse_twins(self, record: JobRecord, batch_id: str) -> None:
        # Recorded first, looked for second: of two runners starting the same
        # batch at once, at least one sees the other (both may fail; never
        # both run).
        active = [JobState.RUNNING, JobState.CANCELLING]
        for other in self.store.find(states=active, limit=10_000):
            if other.batch_id == batch_id and other.id != record.id:
                raise Conflict(
                    f"batch {batch_id} is already being run by job {other.id}; "
                    "two runs of one batch would undo each other's work: resume this "
                    "job once that one has finished (its finished shards are skipped)"
                )

    @contextlib.contextmanager
    def _cluster(self, record: JobRecord, job: BatchJob) -> Iterator[Any]:
        """The job's Dask cluster, closed (its workers freed) however the run ends."""
        settings = self.settings
        if record.cluster is not None:
            profile = settings.cluster(record.cluster)
            if not profile.send_token:
                job.settings = settings.model_copy(update={"token": None})
            with cluster_client(record.cluster, profile, settings) as client:
                self.store.log(record.id, f"running on cluster profile {record.cluster}")
                yield client
            return
        with dask_client(None, self.workers) as client:
            pids = self._lower_priority(client)
            self.store.log(
                record.id,
                f"running on a local cluster of {len(pids)} worker(s) "
                f"(pids {', '.join(map(str, pids))}; nice {settings.jobs.worker_nice})",
            )
            try:
                yield client
            finally:
                if job.cancelled:
                    # A cancelled task that is running runs on (Dask cannot
                    # interrupt it) and the cluster's close waits for it: the
                    # workers are killed instead.  Their shards are written
                    # aside and renamed, so nothing half-written is kept.
                    for pid in pids:
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)

    def _lower_priority(self, client: Any) -> list[int]:
        """Lower the local workers' CPU priority, so a batch job beside a server
        never takes the cores its realtime requests need; the workers' process ids."""
        nice = self.settings.jobs.worker_nice
        if nice:
            # Relative to this runner; on the workers there are and on any a
            # nanny starts again (their nannies run in this process, which
            # keeps its own priority).
            level = min(os.getpriority(os.PRIO_PROCESS, 0) + nice, _LOWEST)
            client.register_worker_callbacks(setup=functools.partial(lower_priority, level))
        pids: dict[str, int] = client.run(os.getpid)
        return sorted(pids.values())

    def _on_shard(self, run: _Run) -> Callable[[ShardResult], None]:
        def on_shard(result: ShardResult) -> None:
            run.shards_done += 1
            run.rows_in += result.rows
            run.rows_out += result.outputs
            run.dead_letters += result.dead_letters
            job_id = run.record.id
            try:
                self.store.log(
                    job_id,
                    f"shard {result.shard}: {result.rows} rows, {result.outputs} output rows, "
                    f"{result.dead_letters} dead letters in {result.seconds:.2f} s "
                    f"(worker pid {result.pid})",
                )
                state = self.store.progress(
                    job_id,
                    shards_done=run.shards_done,
                    rows_in=run.rows_in,
                    rows_out=run.rows_out,
                    dead_letters=run.dead_letters,
                )
            except Exception as exc:  # a database hiccup fails no job: the next shard tells
                logger.warning("job %s: progress not recorded: %s", job_id, exc)
                return
            self._look(run, state)

        return on_shard


def lower_priority(level: int) -> None:
    """Give every thread of this process the nice value ``level`` (if it is
    lower): Linux keeps one per thread, and threads inherit their creator's."""
    tasks = Path("/proc/self/task")
    tids = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            if os.getpriority(os.PRIO_PROCESS, tid) < level:
                os.setpriority(os.PRIO_PROCESS, tid, level)


def _check_relative(data: object, base: Path | None) -> None:
    """Relative paths of a stored spec resolve inside ``base``; without it they
    would name whatever the runner's working directory holds: refused."""
    if not isinstance(data, dict):
        return  # parse_batch_spec says what is wrong with it
    entries: list[tuple[str, object]] = [("input", data.get("input"))]
    features = data.get("features")
    if isinstance(features, dict):
        python = features.get("python")
        if isinstance(python, str):
            entries.append(("features.python", python.rpartition(":")[0]))
    for field, value in entries:
        if not isinstance(value, str) or not value or "://" in value or Path(value).is_absolute():
            continue
        if base is None:
            raise InvalidInput(
                f"the spec's {field} {value!r} is a relative path, and a stored spec has no "
                "directory of its own: give an absolute path or URL, or make the first "
                "[jobs] archives entry a directory to resolve it against"
            )
        root = os.path.normpath(base.absolute())
        if os.path.commonpath([root, os.path.normpath(base.absolute() / value)]) != root:
            raise InvalidInput(f"the spec's {field} {value!r} leads out of {base}")


def _describe(exc: BaseException) -> str:
    """One clear line (or a few) for the record: never a traceback."""
    if isinstance(exc, SciserveError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
