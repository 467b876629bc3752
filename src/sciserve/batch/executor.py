"""The Dask cluster a batch job runs on.

By default a local cluster of worker *processes* (one thread each, so a
shard has a core to itself) bound to 127.0.0.1 with no dashboard (its
HTTP endpoint on a free loopback port), closed when the job ends; with
``scheduler`` an existing cluster, whose workers must be able to read the
registry (``--home`` on a shared file system); with a cluster profile
(``[clusters.NAME]`` in ``sciserve.toml``) workers started as jobs of a
site's scheduler (Slurm, HTCondor, PBS through dask-jobqueue) or as
Kubernetes pods (dask-kubernetes), scaled between the profile's
``min_jobs`` and ``max_jobs``, and cancelled when the job ends.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
import shlex
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import DependencyMissing, InvalidInput, Unavailable

if TYPE_CHECKING:
    from ..config import ClusterProfile, Settings

__all__ = ["cluster_client", "dask_client", "job_script"]

_SCHEDULER_RE = re.compile(r"^(tcp|tls)://[^\s/:]+:\d{1,5}$")
#: Seconds to wait for an existing scheduler to answer.
CONNECT_TIMEOUT = 10


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise DependencyMissing("batch jobs need Dask: pip install 'sciserve[dask]'") from exc
    return distributed


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int = 2) -> Iterator[Any]:
    """A ``distributed.Client`` of ``scheduler``, or of a new local cluster of
    ``workers`` processes; everything it started is closed on exit."""
    distributed = _distributed()
    if scheduler is not None:
        if not _SCHEDULER_RE.fullmatch(scheduler):
            raise InvalidInput(f"{scheduler!r} is not a scheduler address like tcp://HOST:PORT")
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
        with client:
            yield client
        return
    if workers < 1:
        raise InvalidInput("--workers must be at least 1")
    cluster = distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        # The scheduler serves health and metrics over HTTP even without a
        # dashboard, by default on port 8787 of every interface: loopback and
        # a free port instead, so that jobs side by side do not collide.
        scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.ERROR,
    )
    with cluster, distributed.Client(cluster) as client:
        yield client


# -- cluster profiles ------------------------------------------------------

_LOOPBACK = ("127.", "localhost", "::1")
#: The port a job script names before a run picks the scheduler's real one.
_SCRIPT_PORT = 8786


def _jobqueue(kind: str) -> Any:
    try:
        return importlib.import_module(f"dask_jobqueue.{kind}")
    except ImportError as exc:
        raise DependencyMissing(
            f"{kind} cluster profiles need dask-jobqueue: pip install 'sciserve[dask]'"
        ) from exc


def _kubernetes() -> Any:
    try:
        from dask_kubernetes import operator
    except ImportError as exc:
        raise DependencyMissing(
            "kubernetes cluster profiles need dask-kubernetes: pip install dask-kubernetes"
        ) from exc
    return operator


def _environment(profile: ClusterProfile, settings: Settings) -> dict[str, str]:
    """What a worker's environment needs: the registry (``SCISERVE_HOME``, or the
    server's URL) and the profile's own variables.  Never the token: job
    scripts are written to disk in clear (the tasks carry it to the workers
    over the Dask connection; a site may also set ``SCISERVE_TOKEN`` itself)."""
    env = {"SCISERVE_HOME": str(settings.home)}
    if settings.server_url:
        env["SCISERVE_URL"] = settings.server_url
    env.update(profile.worker_env)
    return env


def _htcondor_directives(profile: ClusterProfile) -> dict[str, str]:
    directives: dict[str, str] = {}
    if profile.image is not None:
        directives["universe"] = "container"
        directives["container_image"] = profile.image
    for line in profile.job_extra_directives:
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"HTCondor directive {line!r} is not 'key = value'")
        directives[key.strip()] = value.strip()
    return directives


def _job_kwargs(name: str, profile: ClusterProfile, settings: Settings) -> dict[str, Any]:
    """dask-jobqueue's job arguments for ``profile`` (shared by clusters and scripts)."""
    python = profile.python or ("python3" if profile.image else sys.executable)
    exports = [f"export {k}={shlex.quote(v)}" for k, v in _environment(profile, settings).items()]
    kwargs: dict[str, Any] = {
        "job_name": f"sciserve-{name}",
        "cores": profile.cores,
        "processes": profile.processes,
        "memory": profile.memory,
        "python": python,
        "job_script_prologue": [*exports, *profile.prologue],
    }
    if profile.scheduler_host.startswith(_LOOPBACK):
        kwargs["worker_extra_args"] = ["--host", "127.0.0.1"]
    if profile.log_directory is not None:
        kwargs["log_directory"] = profile.log_directory
    if profile.kind == "htcondor":
        kwargs["disk"] = profile.disk or "1GiB"
        kwargs["job_extra_directives"] = _htcondor_directives(profile)
        return kwargs
    kwargs["job_extra_directives"] = list(profile.job_extra_directives)
    for key in ("queue", "account", "walltime"):
        if getattr(profile, key) is not None:
            kwargs[key] = getattr(profile, key)
    return kwargs


_CLASSES = {
    "slurm": ("SLURMJob", "SLURMCluster"),
    "htcondor": ("HTCondorJob", "HTCondorCluster"),
    "pbs": ("PBSJob", "PBSCluster"),
}


def job_script(name: str, profile: ClusterProfile, settings: Settings) -> str:
    """The job script (or HTCondor submit description, or Kubernetes
    ``DaskCluster`` resource) that ``profile`` submits for each job; the
    scheduler's port in it is the default one, a run picks a free port."""
    if profile.kind == "kubernetes":
        import yaml

        spec = _kubernetes().make_cluster_spec(**_kube_kwargs(name, profile, settings))
        return str(yaml.safe_dump(spec, sort_keys=False))
    job = getattr(_jobqueue(profile.kind), _CLASSES[profile.kind][0])(
        scheduler=f"tcp://{profile.scheduler_host}:{_SCRIPT_PORT}",
        name=f"sciserve-{name}-0",
        **_job_kwargs(name, profile, settings),
    )
    return str(job.job_script())


def _kube_kwargs(name: str, profile: ClusterProfile, settings: Settings) -> dict[str, Any]:
    resources = {"cpu": str(profile.cores), "memory": profile.memory.replace("iB", "i")}
    return {
        "name": f"sciserve-{name}",
        "image": profile.image,
        "n_workers": profile.min_jobs,
        "env": _environment(profile, settings),
        "resources": {"requests": resources, "limits": resources},
    }


def _cluster(name: str, profile: ClusterProfile, settings: Settings) -> Any:
    if profile.kind == "kubernetes":
        operator = _kubernetes()
        kwargs = _kube_kwargs(name, profile, settings)
        if profile.namespace is not None:
            kwargs["namespace"] = profile.namespace
        return operator.KubeCluster(**kwargs)
    cls = getattr(_jobqueue(profile.kind), _CLASSES[profile.kind][1])
    return cls(
        # The dashboard stays on the loopback interface, on a free port.
        scheduler_options={"host": profile.scheduler_host, "dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.ERROR,
        **_job_kwargs(name, profile, settings),
    )


def _submit_first_jobs(name: str, cluster: Any, profile: ClusterProfile) -> None:
    """Submit the first ``min_jobs`` jobs now, so that a submission the site
    refuses (a wrong partition, account or directive) is reported at once
    with the scheduler's own words, rather than as workers that never come."""
    # Adding the jobs to the spec and bringing the cluster to it in one call
    # (``scale`` alone would submit in the background and only log a failure).
    cluster.worker_spec.update(
        {
            cluster._new_worker_name(i): cluster.new_spec
            for i in range(len(cluster.worker_spec), profile.min_jobs)
        }
    )
    try:
        cluster.sync(cluster._correct_state)
    except RuntimeError as exc:
        # Jobs never submitted have nothing to cancel (and would stop the
        # cluster from closing); the others are cancelled when it closes.
        for key, job in list(cluster.workers.items()):
            if getattr(job, "job_id", None) is None:
                job.status = _distributed().core.Status.failed
                del cluster.workers[key]
                cluster.worker_spec.pop(key, None)
        said = [line for line in str(exc).splitlines() if "error" in line.lower()]
        raise Unavailable(
            f"cluster {name!r}: the {profile.kind} scheduler refused the job: "
            + ("; ".join(said) or str(exc))
        ) from None


@contextlib.contextmanager
def cluster_client(name: str, profile: ClusterProfile, settings: Settings) -> Iterator[Any]:
    """A ``distributed.Client`` of a cluster built from ``profile``: jobs
    scaled adaptively between ``min_jobs`` and ``max_jobs``, at least
    ``min_jobs`` jobs' workers joined before it is yielded (or
    :class:`Unavailable` after ``start_timeout``).  The cluster is closed,
    and its jobs cancelled, however the block ends (an error, Ctrl-C)."""
    distributed = _distributed()
    cluster = _cluster(name, profile, settings)
    try:
        if profile.kind == "kubernetes":
            cluster.adapt(minimum=profile.min_jobs, maximum=profile.max_jobs)
        else:
            _submit_first_jobs(name, cluster, profile)
            cluster.adapt(minimum_jobs=profile.min_jobs, maximum_jobs=profile.max_jobs)
        with distributed.Client(cluster) as client:
            wanted = profile.min_jobs * profile.processes
            try:
                client.wait_for_workers(wanted, timeout=profile.start_timeout)
            except TimeoutError:
                raise Unavailable(
                    f"cluster {name!r}: {wanted} worker(s) did not join in "
                    f"{profile.start_timeout:g} s (are its jobs queued or failing? see "
                    f"{profile.log_directory or 'the jobs output'}; is scheduler_host "
                    f"{profile.scheduler_host} reachable from the {profile.kind} nodes?)"
                ) from None
            yield client
    finally:
        cluster.close()
