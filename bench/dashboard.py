"""Server-side render time of the dashboard's catalogue and model pages.

Publishes ``--models`` models of ``--versions`` versions each through the
:class:`~sciserve.registry.registry.Registry` API (real registry rows; the
packages share one tiny ONNX file, which the content-addressed store keeps
once), tags and yanks some, then asks the real dashboard application
(:func:`sciserve.protocol.rest.create_app`, in process through httpx's ASGI
transport, so no socket or client is timed) for each page ``--requests``
times and prints p50 / p99 per page::

    python bench/dashboard.py                       # SQLite in a temporary home
    python bench/dashboard.py --database postgresql+psycopg://postgres@127.0.0.1:5432/test
    python bench/dashboard.py --models 100 --versions 3 --requests 20   # a quick look

With ``--database`` the registry's tables are made in a fresh PostgreSQL
schema, dropped at the end.  The target (issue 13): every page under 100 ms
at 1,000 models x 10 versions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import sqlalchemy as sa
from onnx import TensorProto, helper, numpy_helper

from sciserve._hashing import sha256_file
from sciserve.config import ServingConfig, Settings
from sciserve.package.manifest import Manifest, dump_manifest
from sciserve.protocol.rest import create_app
from sciserve.registry.registry import Registry
from sciserve.serving.service import InferenceService

TARGET_MS = 100.0
NAMESPACES = 10
LICENCES = ("MIT", "Apache-2.0", "BSD-3-Clause")
TAGS = ("photometry", "spectra", "transients", "variables", "galaxies", "lensing", "ztf", "lsst")


def _onnx_file(path: Path) -> None:
    """A linear model ``y = x @ W + b``, 4 -> 3, FP32."""
    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.ones(3, np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def _namespace(i: int) -> str:
    return f"ns{i % NAMESPACES}"


def _name(i: int) -> str:
    return f"model-{i:04d}"


def populate(reg: Registry, work: Path, n_models: int, n_versions: int) -> None:
    """``n_models`` x ``n_versions`` published versions, with aliases and yanks."""
    root = work / "package"
    root.mkdir()
    _onnx_file(root / "model.onnx")
    sha, size = sha256_file(root / "model.onnx")
    started = time.perf_counter()
    for i in range(n_models):
        tags = [TAGS[i % len(TAGS)], TAGS[(i * 3 + 1) % len(TAGS)]]
        for v in range(n_versions):
            data = {
                "name": _name(i),
                "version": f"1.{v}.0",
                "namespace": _namespace(i),
                "description": f"Classifier {i} of {tags[0]} light curves, trained on run {v}.",
                "runtime": "onnx",
                "model_file": "model.onnx",
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
                "files": [{"path": "model.onnx", "size": size, "sha256": sha, "role": "model"}],
                "license": LICENCES[i % len(LICENCES)],
                "tags": sorted(set(tags)),
                "authors": [{"name": "Bench Author", "orcid": "0000-0002-1825-0097"}],
            }
            (root / "sciserve.yaml").write_text(dump_manifest(Manifest.model_validate(data)))
            reg.publish(root)
        ref = f"{_namespace(i)}/{_name(i)}"
        if i % 2 == 0:
            reg.tag(f"{ref}:1.{n_versions // 2}.0", "production")
        if i % 5 == 0 and n_versions > 1:
            reg.tag(f"{ref}:1.0.0", "staging")
            reg.yank(f"{ref}:1.{n_versions - 1}.0", "bad calibration")
        if (i + 1) % 100 == 0:
            rate = (i + 1) * n_versions / (time.perf_counter() - started)
            print(f"  published {(i + 1) * n_versions} versions ({rate:.0f}/s)", file=sys.stderr)


@contextmanager
def _postgres_schema(url: str, keep: str | None) -> Iterator[str]:
    """``url`` with a schema first on its search path: ``keep`` (made if
    missing, kept afterwards), else a fresh one, dropped afterwards."""
    schema = keep or f"bench_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        if keep is None:
            with engine.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


#: A page label whose every request follows a registry write (an alias set
#: or removed), so the catalogue is read again from the database each time.
AFTER_WRITE = "catalogue, first page, after each registry write"


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def measure(
    reg: Registry, pages: dict[str, str], requests: int
) -> dict[str, tuple[float, float, float, int]]:
    """Wall p50, p99, CPU p50 (ms) and page size (bytes) per page.

    CPU is this process's CPU time over the request (every thread: the event
    loop and the worker the dashboard hands the registry to): what the page
    costs the server, whatever else the machine is doing.
    """
    config = ServingConfig(models=(f"{_namespace(0)}/{_name(0)}",), http_port=0)
    service = InferenceService(reg, config)
    await service.start()
    try:
        app = create_app(service)
        transport = httpx.ASGITransport(app=app)
        out = {}
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for label, path in pages.items():
                times, cpu = [], []
                size = 0
                for attempt in range(requests + 3):  # three to warm up
                    if label == AFTER_WRITE:
                        ref = f"{_namespace(1)}/{_name(1)}:1.0.0"
                        if attempt % 2:
                            reg.untag(ref, "bench")
                        else:
                            reg.tag(ref, "bench")
                    start, start_cpu = time.perf_counter(), time.process_time()
                    response = await client.get(path)
                    elapsed = (time.perf_counter() - start) * 1000
                    used = (time.process_time() - start_cpu) * 1000
                    if response.status_code != 200:
                        raise SystemExit(
                            f"{path}: HTTP {response.status_code}\n{response.text[:500]}"
                        )
                    size = len(response.content)
                    if attempt >= 3:
                        times.append(elapsed)
                        cpu.append(used)
                times.sort()
                out[label] = (statistics.median(times), _p99(times), statistics.median(cpu), size)
        return out
    finally:
        await service.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--requests", type=int, default=100, help="timed requests per page")
    parser.add_argument("--database", help="a PostgreSQL URL (default: SQLite in the home)")
    parser.add_argument(
        "--schema",
        help="with --database: keep the registry in this PostgreSQL schema and reuse it",
    )
    parser.add_argument(
        "--home",
        type=Path,
        help="keep the registry here and reuse it on the next run (SQLite only; "
        "publishing 10,000 versions takes minutes)",
    )
    args = parser.parse_args(argv)
    middle = _name(args.models // 2)
    pages = {
        "catalogue, first page": "/",
        AFTER_WRITE: "/",
        "catalogue, search 'transients'": "/?q=transients",
        "catalogue, search with no match": "/?q=nothing-matches-this",
        "catalogue, namespace filter": "/?namespace=ns3",
        "catalogue, tag + licence filter": "/?tag=lensing&license=MIT",
        "catalogue, alias filter": "/?alias=staging",
        "catalogue, page 20": "/?page=20",
        "model page (10 versions)": f"/models/{_namespace(args.models // 2)}/{middle}",
        "model page, served model": f"/models/{_namespace(0)}/{_name(0)}",
    }
    if args.home is not None and args.database:
        parser.error("--home keeps a SQLite registry; it does not go with --database")
    if args.schema is not None and not args.database:
        parser.error("--schema needs --database")
    with tempfile.TemporaryDirectory(prefix="sciserve-dash-bench-") as tmp:
        work = Path(tmp)
        home = args.home or work / "home"
        with contextlib_database(args.database, args.schema) as url:
            settings = Settings.load(home, environ={}, database_url=url)
            with Registry(settings) as reg:
                have = len(reg.list_models())
                if have not in (0, args.models):
                    raise SystemExit(f"{home} holds {have} models, not {args.models}")
                if have == 0:
                    print(
                        f"publishing {args.models} models x {args.versions} versions "
                        f"({'PostgreSQL' if args.database else 'SQLite'})",
                        file=sys.stderr,
                    )
                    started = time.perf_counter()
                    populate(reg, work, args.models, args.versions)
                    print(f"  done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
                load_before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
                results = asyncio.run(measure(reg, pages, args.requests))
    command = "python bench/dashboard.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"\n$ {command.strip()}")
    print(
        f"{args.models} models x {args.versions} versions, "
        f"{'PostgreSQL' if args.database else 'SQLite'}, {args.requests} requests per page\n"
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average before: {load_before}; after: {load} ({os.cpu_count()} cores)\n")
    print(f"| page | p50 ms | p99 ms | CPU p50 ms | KiB | p99 under {TARGET_MS:.0f} ms |")
    print("|---|---|---|---|---|---|")
    ok = True
    for label, (p50, p99, cpu, size) in results.items():
        good = p99 < TARGET_MS
        ok = ok and good
        print(
            f"| {label} | {p50:.1f} | {p99:.1f} | {cpu:.1f} | {size / 1024:.0f} "
            f"| {'yes' if good else 'NO'} |"
        )
    return 0 if ok else 1


@contextmanager
def contextlib_database(url: str | None, keep: str | None) -> Iterator[str | None]:
    if url is None:
        yield None
        return
    with _postgres_schema(url, keep) as scoped:
        yield scoped


if __name__ == "__main__":
    sys.exit(main())
