"""The access layer on real ``sciserve serve`` processes.

* quotas: a client over its rate gets 429 + ``Retry-After`` (REST) and
  RESOURCE_EXHAUSTED + ``retry-after`` (gRPC) while a neighbour's requests
  keep succeeding, about as fast as without it;
* usage and audit: ``sciserve usage --csv`` and ``sciserve audit`` report
  exactly what the test did;
* secrets: no token appears in the server's logs, its metrics, any error
  body or any column of any table;
* TLS with certificates made for the test, and the refusal to serve beyond
  loopback without authentication (before anything is bound).

The quota, usage, audit and secret checks run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import sqlalchemy as sa
import trustme
from tritonclient.grpc import service_pb2, service_pb2_grpc

from sciserve.access.bind import check_bind_safety
from sciserve.access.tokens import TokenStore
from sciserve.cli import main
from sciserve.config import Settings
from sciserve.errors import PermissionDenied
from sciserve.package.archive import pack
from sciserve.registry.registry import Registry

from helpers.packages import expected_linear, make_onnx_package
from helpers.server import stop_server

pytestmark = pytest.mark.slow

BANNER = re.compile(r"http=(\S+) grpc=(\S+) metrics=(\S+)")
MODEL = "alpha.m"
REGISTRY = "/v2/sciserve/registry"
#: Each caller's own limits, far above what the test sends; the noisy token has its own.
SETTINGS = "[access]\ndefault_rate = { rate = 1000.0, burst = 1000 }\n"
NOISY_RATE = 5


# -- a server with its output in files -------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    http: str
    grpc: str
    metrics: str
    logs: Path

    def log_text(self) -> str:
        return "".join(
            (self.logs / name).read_text(errors="replace") for name in ("stdout", "stderr")
        )


def _environment() -> dict[str, str]:
    # Only what the command line says: no settings leaking in from the caller.
    return {k: v for k, v in os.environ.items() if not k.startswith("SCISERVE_")}


def _start(
    home: Path,
    logs: Path,
    *,
    top: Sequence[str] = (),
    serve: Sequence[str] = (),
    ca: trustme.CA | None = None,
) -> Server:
    logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "sciserve", "--home", str(home), *top, "serve"]
    ports = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    with (logs / "stdout").open("wb") as out, (logs / "stderr").open("wb") as err:
        proc = subprocess.Popen(
            [*command, *ports, "--poll-interval", "0.3", *serve],
            stdout=out,
            stderr=err,
            env=_environment(),
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    try:
        while (match := BANNER.search((logs / "stdout").read_text())) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {(logs / 'stderr').read_text()}")
            time.sleep(0.05)
        http, grpc_address, metrics = match.groups()
        server = Server(proc, http, grpc_address, metrics, logs)
        scheme, verify = ("https", _trusting(ca)) if ca is not None else ("http", True)
        while True:
            with contextlib.suppress(httpx.TransportError):
                url = f"{scheme}://{server.http}/v2/health/ready"
                if httpx.get(url, verify=verify).status_code == 200:
                    return server
            if time.monotonic() > deadline:
                raise RuntimeError("server never became ready")
            time.sleep(0.1)
    except BaseException:
        _stop(proc)
        raise


def _stop(proc: subprocess.Popen[bytes]) -> int:
    return stop_server(proc, timeout=60)


@contextlib.contextmanager
def _running(home: Path, logs: Path, **options: Any) -> Iterator[Server]:
    server = _start(home, logs, **options)
    try:
        yield server
    finally:
        _stop(server.proc)


def _trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


# -- clients that remember what they were told ------------------------------------


def _infer_body(rows: int) -> bytes:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    tensor = {"name": "x", "datatype": "FP32", "shape": [rows, 4], "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def _infer_request(rows: int) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="x", datatype="FP32", shape=[rows, 4])
    request.raw_input_contents.append(np.ones((rows, 4), np.float32).tobytes())
    return request


@dataclass
class Clients:
    """REST and gRPC calls to one server; keeps every error text received."""

    server: Server
    http: httpx.Client = field(init=False)
    channel: grpc.Channel = field(init=False)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=f"http://{self.server.http}", timeout=30)
        self.channel = grpc.insecure_channel(self.server.grpc)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def close(self) -> None:
        self.http.close()
        self.channel.close()

    def request(self, method: str, path: str, token: str | None, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = self.http.request(method, path, headers=headers, **kwargs)
        if response.status_code >= 400:
            self.errors.append(response.text)
        return response

    def infer(self, token: str | None, rows: int = 1) -> httpx.Response:
        return self.request(
            "POST",
            f"/v2/models/{MODEL}/infer",
            token,
            content=_infer_body(rows),
            headers={"Content-Type": "application/json"},
        )

    def grpc_infer(self, token: str, rows: int = 1) -> grpc.StatusCode:
        """Infer over gRPC; the status code, with a RESOURCE_EXHAUSTED's retry-after checked."""
        try:
            self.stub.ModelInfer(
                _infer_request(rows), metadata=(("authorization", f"Bearer {token}"),), timeout=30
            )
        except grpc.RpcError as exc:
            self.errors.append(exc.details() or "")
            code: grpc.StatusCode = exc.code()
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                trailers = dict(exc.trailing_metadata() or ())
                assert int(trailers["retry-after"]) >= 1
            return code
        return grpc.StatusCode.OK


# -- the command line, in this process ------------------------------------------------


@dataclass
class Cli:
    home: Path
    database_url: str
    capsys: pytest.CaptureFixture[str]
    outputs: list[str] = field(default_factory=list)

    def __call__(self, *args: str) -> str:
        rc = main(["--home", str(self.home), "--database-url", self.database_url, *args])
        out, err = self.capsys.readouterr()
        assert rc == 0, (args, out, err)
        return out

    def report(self, *args: str) -> str:
        """Output of a command that shows no secret: kept to be searched for one."""
        out = self(*args)
        self.outputs.append(out)
        return out

    def token(self, subject: str, *options: str) -> tuple[str, str]:
        """A new token: its id and the token string."""
        created = json.loads(self("--json", "token", "create", "--subject", subject, *options))
        return created["token_id"], created["token"]


# -- 2. quotas ---------------------------------------------------------------------------

#: A client in its own process: infer as fast as it can for some seconds, then
#: print what it got.  The token comes on stdin, never on a command line.
NOISY_CLIENT = """
import json, sys, threading, time
import httpx
url, body = sys.argv[1], sys.argv[2].encode()
headers = {"Authorization": "Bearer " + sys.stdin.readline().strip(),
           "Content-Type": "application/json"}
# It stops when the test closes its stdin (or after a minute, whatever happens).
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
statuses, retry_after, bodies = {}, set(), set()
started = time.monotonic()
with httpx.Client(timeout=30) as client:
    while not stop.is_set() and time.monotonic() - started < 60:
        response = client.post(url, content=body, headers=headers)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code == 429:
            if not retry_after:
                print("limited", flush=True)  # over its rate: the test may measure now
            retry_after.add(response.headers.get("retry-after"))
            bodies.add(response.text)
print(json.dumps({"statuses": statuses, "retry_after": sorted(retry_after),
                  "bodies": sorted(bodies), "seconds": time.monotonic() - started}))
"""


def _latencies(clients: Clients, token: str, count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        response = clients.infer(token)
        out.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return out


def _check_quotas(clients: Clients, tokens: dict[str, str], done: Counter[str]) -> None:
    """The noisy token is refused over its rate; its neighbour is not slowed down."""
    _latencies(clients, tokens["neighbour"], 20)  # warm up connections and caches
    alone = _latencies(clients, tokens["neighbour"], 150)
    command = [
        sys.executable,
        "-c",
        NOISY_CLIENT,
        f"http://{clients.server.http}/v2/models/{MODEL}/infer",
        _infer_body(1).decode(),
    ]
    # Leaving the block closes its pipes and waits for it.
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as noisy:
        assert noisy.stdin is not None and noisy.stdout is not None
        noisy.stdin.write(tokens["noisy"] + "\n")
        noisy.stdin.flush()
        # Measure only once the noisy client is over its rate, and while it keeps going.
        assert noisy.stdout.readline() == "limited\n"
        crowded = _latencies(clients, tokens["neighbour"], 150)
        noisy.stdin.close()  # stop
        out = noisy.stdout.read()  # its report
    report = json.loads(out)
    statuses = {int(k): v for k, v in report["statuses"].items()}
    assert set(statuses) == {200, 429}, statuses
    # Its bucket: the burst, then the rate (with slack for timing).
    assert statuses[200] <= NOISY_RATE * (1 + report["seconds"]) + 2
    assert statuses[429] > 5 * statuses[200]
    assert all(int(value) >= 1 for value in report["retry_after"])
    assert all(json.loads(b)["type"] == "RateLimited" for b in report["bodies"])
    clients.errors += report["bodies"]
    done["noisy"] += statuses[200]
    done["neighbour"] += len(alone) + len(crowded) + 20
    # Generous: the server shares two cores with both clients.
    p50_alone, p50_crowded = statistics.median(alone), statistics.median(crowded)
    assert p50_crowded < 3 * p50_alone + 0.010, (p50_alone, p50_crowded)
    # gRPC: the same bucket, RESOURCE_EXHAUSTED with a retry-after once it is empty.
    codes = Counter(clients.grpc_infer(tokens["noisy"]) for _ in range(3 * NOISY_RATE))
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] >= NOISY_RATE
    done["noisy"] += codes[grpc.StatusCode.OK]


# -- 4. usage and audit -------------------------------------------------------------------


def _publish(clients: Clients, token: str, work: Path, version: str) -> httpx.Response:
    package = make_onnx_package(
        work / f"new-{version}", name="new", namespace="alpha", version=version
    )
    archive = pack(package, work / f"new-{version}.tar.gz").read_bytes()
    return clients.request(
        "POST",
        f"{REGISTRY}/models",
        token,
        content=archive,
        headers={"Content-Type": "application/gzip"},
    )


def _exercise(
    clients: Clients,
    cli: Cli,
    tokens: dict[str, str],
    ids: dict[str, str],
    work: Path,
    done: Counter[str],
) -> None:
    """Inferences, a revocation, publishing, tagging, yanking and denied calls."""
    for _ in range(7):
        response = clients.infer(tokens["alice"], rows=2)
        assert response.status_code == 200
        y = np.array(response.json()["outputs"][0]["data"], np.float32).reshape(2, 3)
        np.testing.assert_allclose(y, expected_linear(np.arange(8).reshape(2, 4)))
    done["alice"] += 7
    for _ in range(4):
        assert clients.grpc_infer(tokens["bob"], rows=3) is grpc.StatusCode.OK
    done["bob"] += 4

    assert clients.infer(tokens["carl"]).status_code == 200
    done["carl"] += 1
    cli("token", "revoke", ids["carl"])
    # Another process revoked it: the server notices within its token cache TTL.
    deadline = time.monotonic() + 15
    while (status := clients.infer(tokens["carl"]).status_code) == 200:
        done["carl"] += 1
        assert time.monotonic() < deadline, "the revoked token still works"
        time.sleep(0.2)
    assert status == 401

    publisher = tokens["publisher"]
    assert _publish(clients, publisher, work, "1.0.0").status_code == 201
    assert _publish(clients, publisher, work, "2.0.0").status_code == 201
    model = f"{REGISTRY}/models/alpha/new"
    tag = clients.request("PUT", f"{model}/aliases/stable", publisher, json={"version": "2.0.0"})
    assert tag.status_code == 200
    yank = clients.request(
        "POST", f"{model}/versions/1.0.0/yank", publisher, json={"reason": "superseded"}
    )
    assert yank.status_code == 200 and yank.json()["yanked"] is True

    # Denied: a publisher may not infer; nobody may do anything without a token.
    assert clients.infer(publisher).status_code == 403
    assert clients.infer(None).status_code == 401
    assert clients.infer("ssv_" + "0" * 12 + "_" + "x" * 43).status_code == 401


def _check_usage(cli: Cli, ids: dict[str, str], done: Counter[str]) -> None:
    rows_per_request = {"alice": 2, "bob": 3}
    report = list(csv.DictReader(io.StringIO(cli.report("usage", "--csv"))))
    by_principal = {
        r["principal"]: (
            r["subject"],
            r["namespace"],
            r["model"],
            int(r["requests"]),
            int(r["rows"]),
        )
        for r in report
    }
    assert len(by_principal) == len(report)
    assert by_principal == {
        ids[who]: (who, "alpha", MODEL, count, count * rows_per_request.get(who, 1))
        for who, count in done.items()
    }
    assert all(float(r["compute_seconds"]) > 0 for r in report)


def _check_audit(cli: Cli, ids: dict[str, str]) -> None:
    events = json.loads(cli.report("--json", "audit", "--limit", "10000"))

    def find(action: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in events
            if e["action"] == action
            and all(
                (e["detail"] or {}).get(k) == v if k == "reason" else e.get(k) == v
                for k, v in fields.items()
            )
        ]

    assert {e["subject"] for e in find("token.create")} == set(ids.values())
    assert len(find("token.revoke", subject=ids["carl"])) == 1
    publisher = ids["publisher"]
    for version in ("1.0.0", "2.0.0"):
        assert find("publish", subject=f"alpha/new:{version}", actor=publisher)
    [tag] = find("tag", subject="alpha/new:2.0.0", actor=publisher)
    assert tag["detail"] == {"alias": "stable"}
    [yank] = find("yank", subject="alpha/new:1.0.0", actor=publisher)
    assert yank["detail"] == {"reason": "superseded"}
    route = "POST /v2/models/{name}/infer"
    assert find("request.denied", subject=route, actor=publisher, reason="forbidden")
    assert find("request.denied", subject=route, actor="unauthenticated", reason="unauthenticated")
    assert find("request.denied", subject=route, actor=ids["noisy"], reason="rate_limited")
    grpc_route = "gRPC ModelInfer"
    assert find("request.denied", subject=grpc_route, actor=ids["noisy"], reason="rate_limited")


# -- 5. no secret anywhere ----------------------------------------------------------------


def _database_text(database_url: str) -> str:
    """Every value of every row of every table, as text."""
    engine = sa.create_engine(database_url)
    try:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        assert {"tokens", "usage", "events"} <= set(metadata.tables)
        with engine.connect() as conn:
            return "\n".join(
                repr(tuple(row))
                for table in metadata.sorted_tables
                for row in conn.execute(sa.select(table))
            )
    finally:
        engine.dispose()


def _check_no_secret(
    secrets: Sequence[str], places: dict[str, str | bytes], database_url: str
) -> None:
    places = {**places, "database": _database_text(database_url)}
    if database_url.startswith("sqlite:///"):
        # The file itself too, with its journal: what a copied backup holds.
        path = Path(database_url.removeprefix("sqlite:///"))
        for file in path.parent.glob(path.name + "*"):
            places[file.name] = file.read_bytes()
    assert len(places["database"]) > 1000  # the tables were really read
    for raw in secrets:
        secret = raw[len("ssv_") + 12 + 1 :]  # ssv_<id>_<secret>
        assert len(secret) == 43
        for name, text in places.items():
            haystack = text if isinstance(text, str) else text.decode("latin-1")
            assert secret not in haystack, f"a token secret appears in {name}"


# -- the scenario, on each database ---------------------------------------------------------


@pytest.mark.parametrize("http", ["in-process", "front-ends"])
def test_quotas_usage_audit_and_no_secret_on_a_shared_server(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str], http: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "sciserve.toml").write_text(SETTINGS)
    with Registry(Settings.load(home, environ={}, database_url=database_url)) as reg:
        reg.publish(make_onnx_package(tmp_path / "m", name="m", namespace="alpha"))
    cli = Cli(home, database_url, capsys)
    ids, tokens = {}, {}
    for who in ("neighbour", "alice", "bob", "carl"):
        ids[who], tokens[who] = cli.token(who, "--scope", "alpha:infer")
    ids["noisy"], tokens["noisy"] = cli.token(
        "noisy", "--scope", "alpha:infer", "--rate", str(NOISY_RATE), "--burst", str(NOISY_RATE)
    )
    ids["publisher"], tokens["publisher"] = cli.token("publisher", "--scope", "alpha:publish")
    done: Counter[str] = Counter()
    serve = ["--auth", *(["--http-frontends", "2"] if http == "front-ends" else [])]
    server = _start(home, tmp_path / "logs", top=["--database-url", database_url], serve=serve)
    clients = Clients(server)
    try:
        _check_quotas(clients, tokens, done)
        _exercise(clients, cli, tokens, ids, tmp_path, done)
        metrics = httpx.get(f"http://{server.metrics}/metrics").text
        assert "sciserve" in metrics
    finally:
        clients.close()
        code = _stop(server.proc)
    assert code == 0, server.log_text()  # SIGTERM is a clean stop, usage flushed
    _check_usage(cli, ids, done)
    _check_audit(cli, ids)
    cli.report("--json", "token", "list")
    places: dict[str, str | bytes] = {
        "server output": server.log_text(),
        "metrics": metrics,
        "error bodies": "\n".join(clients.errors),
        "command output": "\n".join(cli.outputs),
    }
    assert len(clients.errors) > 10
    _check_no_secret(list(tokens.values()), places, database_url)


# -- 3. TLS and bind safety ------------------------------------------------------------------


@pytest.mark.parametrize("frontends", ["none", "grpc", "http"])
def test_tls_serves_rest_and_grpc_to_clients_trusting_the_ca(
    tmp_path: Path, frontends: str
) -> None:
    import gevent.ssl
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_file), append=True)
    ca.cert_pem.write_to_path(str(ca_file))
    home = tmp_path / "home"
    with Registry(Settings.load(home, environ={})) as reg:
        reg.publish(make_onnx_package(tmp_path / "m", name="m", namespace="alpha"))
        _, token = TokenStore(reg).create("tls", {"alpha": ["infer"]})
    bearer = f"Bearer {token}"
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    serve = ["--auth", "--tls-cert", str(cert_file), "--tls-key", str(key_file)]
    if frontends == "grpc":
        serve += ["--grpc-frontends", "1"]
    if frontends == "http":
        serve += ["--http-frontends", "2"]
    with _running(home, tmp_path / "logs", serve=serve, ca=ca) as server:
        http = httpclient.InferenceServerClient(
            server.http,
            ssl=True,
            ssl_options={"ca_certs": str(ca_file)},
            ssl_context_factory=gevent.ssl.create_default_context,
        )
        try:
            tensor = httpclient.InferInput("x", [2, 4], "FP32")
            tensor.set_data_from_numpy(x)
            # A fresh dict: the HTTP client adds its own headers to the one it gets.
            result = http.infer(MODEL, [tensor], headers={"Authorization": bearer})
            np.testing.assert_allclose(result.as_numpy("y"), expected_linear(x))
        finally:
            http.close()
        secure = grpcclient.InferenceServerClient(
            server.grpc, ssl=True, root_certificates=str(ca_file)
        )
        try:
            tensor = grpcclient.InferInput("x", [2, 4], "FP32")
            tensor.set_data_from_numpy(x)
            result = secure.infer(MODEL, [tensor], headers={"authorization": bearer})
            np.testing.assert_allclose(result.as_numpy("y"), expected_linear(x))
        finally:
            secure.close()

        # Plain HTTP and plain gRPC get nowhere; nor does TLS without trusting the CA.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://{server.http}/v2/health/ready")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://{server.http}/v2/health/ready")
        with grpc.insecure_channel(server.grpc) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as failed:
                stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10)
            assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert server.proc.poll() is None


def _held_loopback_ports(count: int) -> list[socket.socket]:
    held = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        held.append(sock)
    return held


def test_no_auth_beyond_loopback_is_refused_before_binding(tmp_path: Path) -> None:
    # The ports asked for are held on loopback: binding 0.0.0.0 to any of them
    # would fail with "address in use", so a refusal that talks about
    # authentication can only have come before any bind.
    held = _held_loopback_ports(3)
    try:
        ports = [str(s.getsockname()[1]) for s in held]
        home = tmp_path / "home"
        # fmt: off
        done = subprocess.run(
            [sys.executable, "-m", "sciserve", "--home", str(home), "serve",
             "--host", "0.0.0.0", "--http-port", ports[0], "--grpc-port", ports[1],
             "--metrics-port", ports[2]],
            capture_output=True, text=True, timeout=120, env=_environment(),
        )
        # fmt: on
    finally:
        for sock in held:
            sock.close()
    assert done.returncode != 0
    assert "authentication" in done.stderr and "in use" not in done.stderr, done.stderr
    assert "0.0.0.0" in done.stderr
    assert not (home / "registry.db").exists()  # refused before even opening the registry
    assert "sciserve serving" not in done.stdout


def test_bind_safety_rule() -> None:
    check_bind_safety("0.0.0.0", auth_enabled=False, insecure=True)  # the operator insisted
    check_bind_safety("0.0.0.0", auth_enabled=True, insecure=False)
    check_bind_safety("127.0.0.1", auth_enabled=False, insecure=False)
    for host in ("0.0.0.0", "::", "192.0.2.7", "example.org"):
        with pytest.raises(PermissionDenied, match="without authentication"):
            check_bind_safety(host, auth_enabled=False, insecure=False)
