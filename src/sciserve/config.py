"""Typed settings, and the only module that reads the environment.

Precedence, highest first: explicit arguments (CLI flags) > ``SCISERVE_*``
environment variables > ``sciserve.toml`` in the data directory > defaults.

All state lives under one data directory (``home``) unless the URLs point
elsewhere::

    <home>/sciserve.toml     optional settings file
    <home>/registry.db       SQLite metadata (default database_url)
    <home>/artifacts/        content-addressed artifact store (default store_url)
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError, InvalidInput

__all__ = [
    "AccessConfig",
    "ClusterProfile",
    "DriftThresholds",
    "IssuerConfig",
    "JobsConfig",
    "Limits",
    "MonitoringConfig",
    "RateLimit",
    "ServingConfig",
    "Settings",
    "frontends_for_cores",
    "parse_gate",
]

_ENV_PREFIX = "SCISERVE_"


class Limits(BaseModel):
    """Size limits that protect the registry from hostile or broken input."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Largest total size an archive may unpack to.
    max_unpacked_bytes: int = Field(default=64 * 2**30, gt=0)
    #: Most members an archive may hold.
    max_archive_members: int = Field(default=10_000, gt=0)
    #: Largest ratio of unpacked to packed bytes for compressed archives
    #: (a gzip bomb reaches >1000).
    max_compression_ratio: float = Field(default=200.0, gt=1)
    #: Largest manifest file, and largest canonical manifest the registry stores.
    max_manifest_bytes: int = Field(default=4 * 2**20, gt=0)
    #: Largest package upload the server's registry API accepts (``[limits]
    #: max_upload_bytes`` in ``sciserve.toml``).
    max_upload_bytes: int = Field(default=2 * 2**30, gt=0)
    #: Largest data file a dataset may hold (``sciserve datasets add``, a URL
    #: fetched for it): a bigger one is refused before it is read or fetched whole.
    max_dataset_file_bytes: int = Field(default=16 * 2**30, gt=0)


class ServingConfig(BaseModel):
    """How ``sciserve serve`` serves: addresses, limits, batching defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    #: Triton's default ports; 0 picks a free port.
    http_port: int = Field(default=8000, ge=0, le=65535)
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    metrics_port: int = Field(default=8002, ge=0, le=65535)
    #: References of the models to load at start; ``None`` loads every model.
    models: tuple[str, ...] | None = None
    #: Ready only when every model marked to load is ready (as Triton).
    strict_readiness: bool = True
    #: How often alias changes made by other processes are picked up (s).
    poll_interval: float = Field(default=5.0, gt=0)
    #: Largest request body (bytes) on HTTP and gRPC.
    max_request_bytes: int = Field(default=64 * 2**20, gt=0)
    #: Requests waiting per model version before new ones get 503 / UNAVAILABLE.
    max_queue_size: int = Field(default=1024, gt=0)
    #: How long the batcher may hold a request to fill a batch (s).
    max_queue_delay: float = Field(default=0.0, ge=0)
    #: Parallel executions per model version.
    instances: int = Field(default=1, gt=0, le=64)
    #: Of ``instances``, how many take only realtime-class requests (so bulk
    #: work never makes a realtime request wait for a running batch).
    realtime_instances: int = Field(default=0, ge=0, le=63)
    #: Full batches predicted to compute faster than this (s) run on the event
    #: loop rather than a worker thread (in-process runtimes only); 0: never.
    max_inline_compute: float = Field(default=0.0005, ge=0, le=0.01)
    #: Processes that terminate gRPC and relay each call to the serving
    #: process, so gRPC's own per-call work leaves its event loop (more gRPC
    #: calls per second when a core is free); 0 serves gRPC in-process.
    grpc_frontends: int = Field(default=0, ge=0, le=64)
    #: Processes that accept and parse HTTP and relay each request to the
    #: serving process, so HTTP's per-request work leaves its event loop
    #: (:func:`frontends_for_cores` is a choice from the core count); 0
    #: serves HTTP in-process.
    http_frontends: int = Field(default=0, ge=0, le=64)
    #: Inference requests each HTTP front end relays at once per class
    #: (realtime: no bound); past it, 503 + Retry-After before the body.
    http_interactive_lane: int = Field(default=1024, ge=1)
    http_batch_lane: int = Field(default=64, ge=1)
    #: The fast path for inference: HTTP front ends decode inference requests
    #: (of credentials the server accepted before) and encode their answers,
    #: so the serving process only runs them; off, they relay every request
    #: as it came.  Without front ends it changes nothing.  Off by default:
    #: on two cores it doubles 64-row JSON throughput but makes one-row
    #: binary requests slower, with a p99 tail of ~40 ms not yet explained.
    http_fast_path: bool = False
    #: Device for every model (overrides the packages' own ``device``).
    device: str | None = None
    #: ONNX Runtime intra-op threads per session.
    intra_op_threads: int = Field(default=1, gt=0)
    #: Versions other than the default that may be loaded on demand at once.
    max_on_demand_versions: int = Field(default=4, ge=0)
    #: Serve without authentication on a non-loopback address (never the default).
    insecure: bool = False
    #: TLS for HTTP and gRPC: a PEM certificate (chain) and its private key.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @model_validator(mode="after")
    def _some_instance_for_everyone(self) -> ServingConfig:
        if self.realtime_instances >= self.instances:
            raise ValueError(
                f"realtime_instances ({self.realtime_instances}) must be less than instances "
                f"({self.instances}): other classes need at least one instance"
            )
        return self


class RateLimit(BaseModel):
    """A token bucket (``rate`` requests/s refilling up to ``burst``) plus a cap
    on requests in flight.  ``None`` means unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate: float | None = Field(default=None, gt=0)
    burst: int = Field(default=1, gt=0)
    concurrency: int | None = Field(default=None, gt=0)


#: Signature algorithms accepted from identity providers.  Symmetric ones
#: (HS256, ...) and "none" are excluded on purpose: a JWKS holds *public*
#: keys, and accepting HMAC with a public key as secret forges any token.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class IssuerConfig(BaseModel):
    """An identity provider whose JWTs are accepted (e.g. a WLCG IAM or INDIGO IAM)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Must equal the tokens' ``iss`` claim exactly.
    issuer: str = Field(min_length=1)
    #: Required ``aud`` value; ``None`` accepts any audience.
    audience: str | None = None
    #: Where the issuer publishes its keys (fetched, cached for ``jwks_cache_ttl``) ...
    jwks_url: str | None = None
    #: ... or a local copy of them.
    jwks_file: Path | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    #: Claim with the space-separated (or list of) scopes.
    scope_claim: str = "scope"
    #: Claim with the list of groups (a literal claim name; dots are not nesting).
    groups_claim: str = "wlcg.groups"
    #: Token scope -> sciserve scopes it grants in every mapped namespace.
    scope_map: dict[str, tuple[Literal["read", "infer", "publish", "admin"], ...]] = {
        "compute.read": ("read",),
        "compute.create": ("infer",),
        "compute.modify": ("publish",),
    }
    #: Group -> namespace (or ``*``) the scopes apply to.
    group_map: dict[str, str] = {}
    default_priority: Literal["realtime", "interactive", "batch"] = "interactive"
    #: Accepted clock skew for ``exp`` / ``nbf`` (s).
    leeway: float = Field(default=30.0, ge=0)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = sorted(set(value) - ASYMMETRIC_ALGORITHMS)
        if bad or not value:
            raise ValueError(
                f"unsupported algorithms {bad}; use some of {sorted(ASYMMETRIC_ALGORITHMS)}"
            )
        return value

    @field_validator("jwks_url")
    @classmethod
    def _https_or_loopback(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(
            ("https://", "http://127.", "http://[::1]", "http://localhost")
        ):
            # Keys fetched over plain HTTP could be swapped by anyone on the path.
            raise ValueError("jwks_url must use https:// (or http:// on the loopback interface)")
        return value


class AccessConfig(BaseModel):
    """Who may do what: authentication, quotas and usage accounting.

    Off by default, which is only safe on the loopback interface (the server
    refuses other addresses unless told ``--insecure``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    #: HMAC key for API tokens at rest; default ``<home>/token-pepper``, created
    #: (mode 0600) when missing.  Replicas sharing one database must share it.
    token_pepper_file: Path | None = None
    #: How long a verified token record is reused before the database is asked
    #: again; a revocation made by another replica takes effect within this (s).
    token_cache_ttl: float = Field(default=2.0, ge=0)
    #: ``last_used_at`` is written at most this often per token (s).
    last_used_interval: float = Field(default=60.0, ge=0)
    #: Limits of each token or federated identity, unless its token says otherwise.
    default_rate: RateLimit = RateLimit(rate=50.0, burst=100, concurrency=16)
    #: Limits of each namespace, summed over everyone using it.
    namespace_rate: RateLimit = RateLimit(rate=500.0, burst=1000, concurrency=64)
    #: Per-namespace exceptions to ``namespace_rate``.
    namespace_limits: dict[str, RateLimit] = {}
    #: How often usage counters are written to the database (s).
    usage_flush_interval: float = Field(default=10.0, gt=0)
    #: At most one "request.denied" audit event per caller and route in this time (s).
    denied_audit_interval: float = Field(default=60.0, ge=0)
    #: How long fetched JWKS documents are reused (s).
    jwks_cache_ttl: float = Field(default=300.0, ge=0)
    issuers: tuple[IssuerConfig, ...] = ()


class ClusterProfile(BaseModel):
    """A batch cluster (``[clusters.NAME]`` in ``sciserve.toml``): where Dask
    workers run as jobs of a site's scheduler (dask-jobqueue) or as
    Kubernetes pods (dask-kubernetes), and what they need there.

    Tokens are not set here: a job script is written to disk in clear, so the
    site sets ``SCISERVE_TOKEN`` in the workers' environment if they need one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["slurm", "htcondor", "pbs", "kubernetes"]
    #: The Python of the workers (a venv's ``bin/python`` on a shared file
    #: system); default the interpreter running sciserve, or ``python3`` in ``image``.
    python: str | None = None
    #: A container image for the workers (HTCondor's container universe, Kubernetes pods).
    image: str | None = None
    #: Cores, memory and worker processes of each job.
    cores: int = Field(default=1, gt=0)
    memory: str = "2GiB"
    processes: int = Field(default=1, gt=0)
    #: Local disk of each job (HTCondor only).
    disk: str | None = None
    walltime: str | None = None
    #: The partition (Slurm) or queue (PBS).
    queue: str | None = None
    account: str | None = None
    #: Site directives added to the job script as they are (``--constraint=el9``,
    #: ``-l place=scatter``; for HTCondor ``key = value`` lines).
    job_extra_directives: tuple[str, ...] = ()
    #: Shell lines run before the worker starts (``module load …``).
    prologue: tuple[str, ...] = ()
    #: Environment of the workers (e.g. ``SCISERVE_URL``); exported by the job script.
    worker_env: dict[str, str] = {}
    #: Adaptive scaling: jobs kept at least / at most; the job waits for ``min_jobs``.
    min_jobs: int = Field(default=1, ge=1)
    max_jobs: int = Field(default=1, ge=1)
    #: How long to wait for the first ``min_jobs`` jobs' workers to join (s).
    start_timeout: float = Field(default=300.0, gt=0)
    #: Address the scheduler listens on: the loopback interface unless set
    #: (workers on other nodes need the submit host's address on their network).
    scheduler_host: str = "127.0.0.1"
    #: Where the jobs' stdout and stderr go (default: the scheduler's own default).
    log_directory: str | None = None
    #: Kubernetes namespace of the pods.
    namespace: str | None = None
    #: Whether the job's tasks carry the submitter's token to the workers
    #: (over the Dask connection, never in a job script); ``false``: workers
    #: use the ``SCISERVE_TOKEN`` their site sets in their own environment.
    send_token: bool = True

    @field_validator("worker_env")
    @classmethod
    def _no_token_in_scripts(cls, value: dict[str, str]) -> dict[str, str]:
        if "SCISERVE_TOKEN" in value:
            raise ValueError(
                "SCISERVE_TOKEN would be written in clear into job scripts: "
                "set it in the workers' environment at the site instead"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ClusterProfile:
        if self.max_jobs < self.min_jobs:
            raise ValueError(f"max_jobs ({self.max_jobs}) is below min_jobs ({self.min_jobs})")
        if self.kind == "kubernetes" and self.image is None:
            raise ValueError("a kubernetes profile needs an image")
        if self.image is not None and self.kind in ("slurm", "pbs"):
            raise ValueError(f"image is for htcondor and kubernetes profiles, not {self.kind}")
        return self


class JobsConfig(BaseModel):
    """``[jobs]`` in ``sciserve.toml``: batch jobs submitted to a server, and
    the runners and schedulers that execute them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Directories (or fsspec URL prefixes such as ``s3://bucket/archive/``)
    #: that a job submitted over the API may read.  Empty: such jobs may read
    #: no files at all (a remote caller must not make the server read its own
    #: disk).  Jobs submitted locally (``sciserve jobs submit`` on the
    #: database) are the local user's and are not limited.
    archives: tuple[str, ...] = ()
    #: Where jobs write their output (one directory per job); default ``<home>/batch``.
    out: Path | None = None
    #: Worker processes of the local Dask cluster a runner starts per job
    #: (default: the cores).  Jobs naming a cluster profile use its workers.
    workers: int | None = Field(default=None, gt=0, le=1024)
    #: Lower the CPU priority (nice) of local workers, so a batch job never
    #: takes the cores realtime requests of the same machine need.
    worker_nice: int = Field(default=10, ge=0, le=19)
    #: Whether ``sciserve serve`` runs a job runner and a scheduler.
    run_in_server: bool = True
    #: Seconds between a runner's looks at the queue and at its jobs' state.
    poll_interval: float = Field(default=1.0, gt=0, le=3600)
    #: A running job whose runner has been silent this long (s) is re-queued.
    stale_after: float = Field(default=120.0, gt=0)


class DriftThresholds(BaseModel):
    """Scores above which a served model's traffic counts as drifted.

    Every field may be left out of a per-model override
    (``[monitoring.models.NAME]``), which then keeps the section's value.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Population stability index of one input feature, on ten reference-quantile bins.
    psi: float | None = Field(default=None, gt=0)
    #: Kolmogorov-Smirnov statistic (largest CDF difference) of one input feature.
    ks: float | None = Field(default=None, gt=0, le=1)
    #: Total-variation distance between the reference and live class mix.
    class_shift: float | None = Field(default=None, gt=0, le=1)
    #: Shift of the mean prediction, in reference standard deviations.
    mean_shift: float | None = Field(default=None, gt=0)


#: The thresholds used where neither the section nor a model sets one.
DEFAULT_THRESHOLDS = DriftThresholds(psi=0.25, ks=0.1, class_shift=0.1, mean_shift=0.5)


def frontends_for_cores(cores: int | None = None) -> int:
    """How many HTTP front ends ``--http-frontends auto`` starts: one per core
    beyond the one the serving process needs, at least one, at most 8 (past
    that the serving process's own loop is the limit, not parsing)."""
    available = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(8, available - 1))


def parse_gate(text: str) -> tuple[bool, float] | None:
    """``">=0.85"`` -> ``(True, 0.85)`` (higher is better), ``"<=0.3"`` ->
    ``(False, 0.3)``; ``None`` if ``text`` is neither."""
    text = text.strip()
    if text[:2] not in (">=", "<="):
        return None
    try:
        threshold = float(text[2:])
    except ValueError:
        return None
    if threshold != threshold or threshold in (float("inf"), float("-inf")):
        return None
    return text.startswith(">="), threshold


class MonitoringConfig(BaseModel):
    """``[monitoring]`` in ``sciserve.toml``: drift and staleness of served models."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Off unless asked for (drift needs references the operator vouches
    #: for).  With it on, at the default row budget, the serving benchmark's
    #: c=16 b=1 HTTP cell lost 3.4 % of its throughput on 2 cores (budget: 5 %).
    enabled: bool = False
    #: Fraction of successful requests whose tensors are handed to the monitor.
    sample_rate: float = Field(default=1.0, ge=0, le=1)
    #: Rows a second the monitor takes at most (0: no limit).  Above it a
    #: random share of requests is monitored, re-estimated every fold (0.5 s):
    #: sketches need a fair sample, not every row, and what the monitor costs
    #: the request path then stops growing with the traffic.  Drift is then
    #: caught within ``check_every / max_rows_per_second`` s rather than
    #: within ``check_every`` requests.
    max_rows_per_second: float = Field(default=200.0, ge=0)
    #: Rows per live window; drift is judged on the current and the previous
    #: window together, so on between ``window`` and ``2 * window`` recent rows.
    window: int = Field(default=5000, ge=100, le=10_000_000)
    #: Rows judged before any alert may be raised (at most ``window`` count).
    min_samples: int = Field(default=2000, ge=1)
    #: Rows between two drift checks of one model version (a check costs
    #: 1-3 ms for 64 features: every 500 rows it was most of the monitor's cost).
    check_every: int = Field(default=2500, ge=1)
    #: An alert clears once every score is below this fraction of its threshold.
    clear_fraction: float = Field(default=0.5, gt=0, le=1)
    thresholds: DriftThresholds = DEFAULT_THRESHOLDS
    #: Per served model name: thresholds that differ from ``thresholds``.
    models: dict[str, DriftThresholds] = {}
    #: Input tensors with more values per row than this are sketched as one
    #: pooled feature rather than column by column (bounds the sketches kept).
    max_features: int = Field(default=64, ge=1, le=4096)
    #: Requests waiting for the monitor's thread; beyond it samples are dropped and counted.
    queue_size: int = Field(default=4096, ge=1)
    #: Tensor values waiting for the monitor's thread, at most.
    max_pending_values: int = Field(default=8_000_000, ge=1)
    #: A model version older than this (days since publication) is stale.
    max_age_days: float | None = Field(default=None, gt=0)
    #: Where alerts are POSTed (JSON); none: alerts show only in metrics and status.
    webhook_url: str | None = None
    #: Sent as ``Authorization: Bearer ...`` to the webhook; never logged.
    webhook_token: SecretStr | None = None
    #: Attempts per alert (the first one included) and the first retry delay (s),
    #: doubled after each failure.
    webhook_attempts: int = Field(default=5, ge=1, le=20)
    webhook_backoff: float = Field(default=1.0, gt=0, le=300)
    #: Alerts waiting to be delivered; more are dropped and counted.
    webhook_queue_size: int = Field(default=256, ge=1)
    #: Base URL of the dashboard; an alert links to ``<base>/models/<name>``.
    dashboard_url: str | None = None
    #: Per served model name: evaluation gates, metric -> ``">=0.85"`` (higher
    #: is better) or ``"<=0.3"``; a version whose latest evaluation misses one is stale.
    gates: dict[str, dict[str, str]] = {}

    @field_validator("gates")
    @classmethod
    def _gate_syntax(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for model, metrics in value.items():
            for metric, gate in metrics.items():
                if parse_gate(gate) is None:
                    raise ValueError(
                        f"gate {model}.{metric} = {gate!r}: write '>=NUMBER' or '<=NUMBER'"
                    )
        return value

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("webhook_url must be an http:// or https:// URL")
        return value

    def thresholds_for(self, model: str) -> DriftThresholds:
        """The thresholds of served model ``model``: its overrides, the
        section's values, then the defaults."""
        merged = DEFAULT_THRESHOLDS.model_dump()
        merged.update({k: v for k, v in self.thresholds.model_dump().items() if v is not None})
        override = self.models.get(model)
        if override is not None:
            merged.update({k: v for k, v in override.model_dump().items() if v is not None})
        return DriftThresholds(**merged)


class Settings(BaseModel):
    """Everything sciserve needs to know about where it keeps state."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path
    database_url: str
    store_url: str
    #: Open the registry without ever writing to it (e.g. from a CVMFS export).
    read_only: bool = False
    #: A remote sciserve server; when set the CLI talks to it instead of a local registry.
    server_url: str | None = None
    #: The bearer token (an API token or a JWT) sent to remote servers by the
    #: CLI and by pipeline model steps; ``SCISERVE_TOKEN``.  A ``SecretStr``,
    #: so it never shows in a repr, a log line or an error.
    token: SecretStr | None = None
    #: Where verified packages are materialised for loading; default
    #: ``<home>/cache``, or the user cache directory for a read-only registry.
    cache_dir: Path | None = None
    limits: Limits = Limits()
    access: AccessConfig = AccessConfig()
    #: Named batch clusters (``sciserve batch run --cluster NAME``).
    clusters: dict[str, ClusterProfile] = {}
    jobs: JobsConfig = JobsConfig()
    monitoring: MonitoringConfig = MonitoringConfig()

    def cluster(self, name: str) -> ClusterProfile:
        """The cluster profile ``name``; an unknown name lists the known ones."""
        try:
            return self.clusters[name]
        except KeyError:
            known = ", ".join(sorted(self.clusters)) or "none"
            raise InvalidInput(
                f"no cluster profile {name!r} in sciserve.toml (known: {known})"
            ) from None

    def auth_headers(self) -> dict[str, str]:
        """The ``Authorization`` header for remote servers, if a token is set."""
        if self.token is None:
            return {}
        return {"Authorization": f"Bearer {self.token.get_secret_value()}"}

    def worker_auth_headers(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The ``Authorization`` header of a batch worker: the job's token, or,
        when the job sent none, the ``SCISERVE_TOKEN`` of the worker's own
        environment (set by the site where the worker runs)."""
        if self.token is not None:
            return self.auth_headers()
        raw = (os.environ if environ is None else environ).get(_ENV_PREFIX + "TOKEN")
        return {"Authorization": f"Bearer {raw}"} if raw else {}

    @property
    def package_cache(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        if self.read_only:
            return Path(platformdirs.user_cache_dir("sciserve")) / "packages"
        return self.home / "cache"

    @classmethod
    def load(
        cls,
        home: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Resolve settings from arguments, environment, file and defaults.

        ``overrides`` whose value is ``None`` are ignored, so CLI options that
        were not given simply fall through to the next source.
        """
        env = os.environ if environ is None else environ
        home_path = Path(
            home or env.get(_ENV_PREFIX + "HOME") or platformdirs.user_data_dir("sciserve")
        ).expanduser()
        values: dict[str, Any] = {
            "database_url": f"sqlite:///{home_path / 'registry.db'}",
            "store_url": str(home_path / "artifacts"),
        }
        values.update(_read_file(home_path / "sciserve.toml"))
        for key in ("database_url", "store_url", "server_url", "token", "read_only", "cache_dir"):
            raw = env.get(_ENV_PREFIX + key.upper())
            if raw:
                values[key] = raw
        if env.get(_ENV_PREFIX + "URL"):  # the short form the CLI documents
            values["server_url"] = env[_ENV_PREFIX + "URL"]
        for key in ("enabled", "token_pepper_file"):
            raw = env.get(_ENV_PREFIX + "ACCESS_" + key.upper())
            if raw:
                values["access"] = {**values.get("access", {}), key: raw}
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["home"] = home_path
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            profiles = [e for e in exc.errors() if e["loc"][:1] == ("clusters",)]
            if profiles:
                # A mistake in a cluster profile is the user's, and is named
                # precisely (the values are left out: worker_env may be private).
                raise InvalidInput(
                    "invalid cluster profile in sciserve.toml: "
                    + "; ".join(_profile_error(e) for e in profiles)
                ) from None
            raise ConfigError(f"invalid settings: {exc}") from exc


def _profile_error(error: Any) -> str:
    loc = [str(part) for part in error["loc"][1:]]
    where = f"[clusters.{loc[0]}]" if loc else "[clusters]"
    key = ".".join(loc[1:])
    if error["type"] == "extra_forbidden":
        return f"{where} has an unknown key {key!r}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where} {key}: {message}" if key else f"{where} {message}"


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    # A [sciserve] table is accepted so the file can be shared with other tools.
    table = data.get("sciserve", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: expected a table of settings")
    return table
