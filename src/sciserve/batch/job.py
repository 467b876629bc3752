"""A batch job: plan, run the missing shards on Dask, verify everything.

Everything that can be checked before work starts is checked in
:meth:`BatchJob.plan`: the models resolve (to exact versions, pinned by
digest for the whole job), the input files open and hold the columns the
spec names with types that convert to the models' input, and the filter
reads only names that exist.  The job id is derived from the spec, the
pinned models and the input files (names, sizes, modification times), so
running the same job again finds its output directory, skips the shards
whose manifest agrees with their files, and redoes only the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..access.priority import Priority
from ..config import Settings
from ..errors import IntegrityError, InvalidInput, SciserveError, Unavailable
from ..package.manifest import TensorSpec
from ..streams.pipeline import (
    PrepareConfig,
    check_filter_names,
    check_trusted,
    preparation,
    rows_along_dim0,
    single_input,
)
from ..streams.spec import BatchSpec, PythonFeatures
from .shards import InputLayout, Shard, find_inputs, plan
from .worker import (
    PROVENANCE,
    ModelPin,
    ShardResult,
    ShardTask,
    finished,
    make_durable,
    run_shard,
    verify_shard,
)

__all__ = ["BatchJob", "JobReport"]

_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
#: Names a tabular job's filter may read besides the model outputs.
TABULAR_FILTER_NAMES = frozenset({"id", "label", "score"})


@dataclass
class JobReport:
    """What a run of a job did."""

    job_id: str
    out_dir: Path
    shards: int
    #: Shards computed by this run, and those already finished before it.
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rows: int = 0
    outputs: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    verified: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "out_dir": str(self.out_dir),
            "shards": self.shards,
            "ran": self.ran,
            "skipped": self.skipped,
            "rows": self.rows,
            "outputs": self.outputs,
            "dead_letters": self.dead_letters,
            "seconds": round(self.seconds, 3),
            "verified": self.verified,
        }


class BatchJob:
    """One job of ``spec`` over its input, writing under ``out / job_id``."""

    def __init__(
        self,
        spec: BatchSpec,
        settings: Settings,
        out: Path,
        *,
        job_id: str | None = None,
        priority: Priority | None = None,
    ) -> None:
        """``priority``: the class the job's ``server:`` steps ask to be served in."""
        if job_id is not None and not _JOB_ID_RE.fullmatch(job_id):
            raise InvalidInput(f"{job_id!r} is not a job id (letters, digits, '.', '_', '-')")
        self.spec = spec
        self.settings = settings
        self.out = out
        self._job_id = job_id
        self.priority = priority
        self.pins: tuple[ModelPin, ...] = ()
        self.shards: list[Shard] = []
        self.layout: InputLayout | None = None
        self.prepare: PrepareConfig | None = None
        # What cancel() stops, from another thread: the client and the
        # futures (shard tasks and checks) of the run in progress.
        self._lock = threading.Lock()
        self._cancelled = False
        self._client: Any = None
        self._futures: list[Any] = []

    @property
    def job_id(self) -> str:
        assert self._job_id is not None, "plan() first"
        return self._job_id

    @property
    def out_dir(self) -> Path:
        return self.out / self.job_id

    # -- planning ----------------------------------------------------------

    def plan(self) -> None:
        """Resolve the models, check and shard the input, fix the job id."""
        from ..datatypes import numpy_dtype
        from ..registry.registry import Registry

        spec = self.spec
        pins: list[ModelPin] = []
        inputs: list[tuple[TensorSpec, bool]] = []
        outputs: list[str] = []
        local = [step.ref for step in spec.models if not step.server]
        resolved: dict[str, Any] = {}
        if local:
            with Registry(self.settings, create=False) as registry:
                resolved = {ref: registry.resolve(ref) for ref in local}
        for step in spec.models:
            # A step with server: runs on that server; the version it means
            # there is pinned now, as the stream pipeline does at start.
            info = self._remote(step.ref, step.server) if step.server else resolved[step.ref]
            manifest = info.manifest
            tensor = single_input(info.ref, manifest.inputs)
            rows_along_dim0(info.ref, manifest)
            batched = manifest.batch_dim_of(tensor) is not None
            pins.append(ModelPin(info.ref, info.digest, step.server))
            inputs.append((tensor, batched))
            outputs.extend(o.name for o in manifest.outputs)
        clash = set(outputs) & {*PROVENANCE, "processed_at"}
        if clash:
            raise InvalidInput(f"model outputs {sorted(clash)} clash with provenance columns")
        self.pins = tuple(pins)
        if spec.columns is not None:
            shapes = {tuple(t.shape[1:] if batched else t.shape) for t, batched in inputs}
            dtypes = {t.datatype for t, _ in inputs}
            if len(shapes) > 1 or len(dtypes) > 1:
                raise InvalidInput(
                    "the models take different inputs; one columns: mapping fills one input"
                )
            self.layout = InputLayout(numpy_dtype(dtypes.pop()).str, shapes.pop())
            check_filter_names(spec.filter_expression, outputs, TABULAR_FILTER_NAMES)
        else:
            if isinstance(spec.features, PythonFeatures):
                check_trusted(spec.features, self.settings)
            self.prepare = preparation(spec, [t for t, _ in inputs], outputs)
        if spec.results:
            from ..streams.results import ResultStore

            ResultStore.open(self.settings).close()  # migrated (or refused) now, not per worker
        self.shards = plan(spec, self.layout)
        if self._job_id is None:
            self._job_id = self._derive_id()

    def _remote(self, ref: str, server: str) -> Any:
        from ..registry.remote import RemoteRegistry

        with RemoteRegistry(server, headers=self.settings.auth_headers()) as registry:
            return registry.resolve(ref)

    def _derive_id(self) -> str:
        doc = {
            # Credentials are not part of what a job computes.
            "spec": self.spec.model_dump(mode="json", exclude={"storage_options"}),
            "inputs": [[f.label, f.size, f.version] for f in find_inputs(self.spec)],
            "models": [[pin.ref, pin.digest, pin.server] for pin in self.pins],
        }
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
        return f"{self.spec.name}-{digest[:12]}"

    def _task(self, shard: Shard) -> ShardTask:
        return ShardTask(
            job_id=self.job_id,
            spec_json=self.spec.model_dump_json(),
            settings=self.settings,
            models=self.pins,
            shard=shard,
            out_dir=str(self.out_dir),
            layout=self.layout,
            prepare=self.prepare,
            priority=self.priority,
        )

    # -- running -----------------------------------------------------------

    def cancel(self) -> None:
        """Stop a :meth:`run` in progress (or the next one) from another
        thread: its tasks are cancelled and it raises
        :class:`~sciserve.errors.Unavailable`.  The shards finished so far
        keep their output, so running the job again skips them."""
        with self._lock:
            self._cancelled = True
            client, futures = self._client, list(self._futures)
        if client is not None and futures:
            client.cancel(futures)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def _track(self, client: Any, futures: list[Any]) -> None:
        """Remember ``futures`` for :meth:`cancel` (at once cancelled if it came first)."""
        with self._lock:
            self._client = client
            self._futures.extend(futures)
            cancelled = self._cancelled
            everything = list(self._futures)
        if cancelled:
            client.cancel(everything)
            self._stopped()

    def _stopped(self) -> None:
        raise Unavailable(f"job {self.job_id} was cancelled; its finished shards are kept")

    def pending(self) -> list[Shard]:
        """The shards a run would compute (those without a finished output)."""
        return [s for s in self.shards if not finished(self.out_dir, s, self.job_id)]

    def run(self, client: Any, on_shard: Callable[[ShardResult], None] | None = None) -> JobReport:
        """Run the shards not yet finished on ``client``'s cluster, then verify
        every shard; a failed check raises :class:`~sciserve.errors.IntegrityError`."""
        started = time.perf_counter()
        if not self.pins:
            self.plan()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._clean_partials()
        self._write_job_file()
        report = JobReport(self.job_id, self.out_dir, len(self.shards))
        todo = []
        for shard in self.shards:
            if finished(self.out_dir, shard, self.job_id):
                report.skipped.append(shard.id)
            else:
                todo.append(shard)
        nonce = os.urandom(4).hex()
        # Each shard is verified once its output is final: a finished one by
        # a task of its own, submitted now; a computed one by its own task,
        # right after writing it (while others still run, rather than in a
        # second round after the last).
        checks: dict[str, Any] = {}
        found: dict[str, tuple[str, ...]] = {}
        try:
            for shard in self.shards:
                if shard.id in report.skipped:
                    checks[shard.id] = self._check(client, shard, nonce)
            self._run_shards(client, todo, report, on_shard, found, nonce)
            self._clean_partials()
            found.update(zip(checks, client.gather(list(checks.values())), strict=True))
            self._verify(client, report, found)
        except BaseException:
            client.cancel(list(checks.values()))
            if self._cancelled:
                self._stopped()
            raise
        finally:
            with self._lock:
                self._client, self._futures = None, []
        report.seconds = time.perf_counter() - started
        return report

    def _check(self, client: Any, shard: Shard, nonce: str) -> Any:
        future = client.submit(
            verify_shard, self._task(shard), key=f"{self.job_id}-{shard.id}-verify-{nonce}"
        )
        self._track(client, [future])
        return future

    def _run_shards(
        self,
        client: Any,
        todo: list[Shard],
        report: JobReport,
        on_shard: Callable[[ShardResult], None] | None,
        found: dict[str, tuple[str, ...]],
        nonce: str,
    ) -> None:
        from distributed import as_completed

        futures = [
            client.submit(run_shard, self._task(s), key=f"{self.job_id}-{s.id}-{nonce}")
            for s in todo
        ]
        try:
            self._track(client, futures)
            for future in as_completed(futures):  # type: ignore[no-untyped-call]
                if self._cancelled:
                    self._stopped()
                result = self._result(future)
                found[result.shard] = result.problems
                report.ran.append(result.shard)
                if on_shard is not None:
                    on_shard(result)
        except BaseException:
            client.cancel(futures)
            raise
        report.ran.sort()

    @staticmethod
    def _result(future: Any) -> ShardResult:
        try:
            result: ShardResult = future.result()
        except SciserveError:
            raise
        except Exception as exc:  # a worker's failure, whatever it was: reported, not a traceback
            raise Unavailable(f"shard {future.key} failed: {type(exc).__name__}: {exc}") from exc
        return result

    def _verify(self, client: Any, report: JobReport, found: dict[str, tuple[str, ...]]) -> None:
        problems = [p for s in self.shards for p in found[s.id]]
        if problems:
            raise IntegrityError(
                f"job {self.job_id}: the output does not match the input:\n  "
                + "\n  ".join(problems)
            )
        for shard in self.shards:
            doc = json.loads((self.out_dir / f"shard-{shard.id}.json").read_text())
            report.rows += doc["rows"]
            report.outputs += doc["outputs"]
            report.dead_letters += doc["dead_letters"]
        self._make_durable(client)
        report.verified = True

    def _make_durable(self, client: Any) -> None:
        """Flush the whole output to disk, once, before it is reported
        verified: on every worker (each flushes what it wrote), then here
        (the job file, and a cluster that has no worker left)."""
        ids = [s.id for s in self.shards]
        try:
            client.run(make_durable, str(self.out_dir), ids)
            make_durable(str(self.out_dir), ids)
        except OSError as exc:
            raise Unavailable(
                f"job {self.job_id}: cannot flush the output to disk: {exc}; "
                "a new run redoes whatever was lost"
            ) from exc

    def _clean_partials(self) -> None:
        # Left by attempts killed mid-write; never trusted, never renamed.
        # (Two runs of one job at once are not supported: they would redo
        # each other's shards, and this may remove the other's files aside.)
        for leftover in self.out_dir.glob(".*.partial"):
            leftover.unlink(missing_ok=True)

    def _write_job_file(self) -> None:
        doc = {
            "job_id": self.job_id,
            "spec": self.spec.model_dump(mode="json", exclude={"storage_options"}),
            "models": [{"ref": p.ref, "digest": p.digest, "server": p.server} for p in self.pins],
            "shards": [
                {"id": s.id, "file": s.label, "row_group": s.row_group} for s in self.shards
            ],
        }
        tmp = self.out_dir / ".job.json.partial"
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, self.out_dir / "job.json")
