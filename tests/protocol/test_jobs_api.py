"""The jobs API: ``/v2/sciserve/jobs`` on a real ``sciserve serve --auth`` process.

A job's spec names files the server's runners will read: every location a
caller sends must be under a ``[jobs] archives`` root, whatever tricks it
tries (``..``, links, ``file://``, other buckets, chained URLs).  Hostile
bodies, ids and query parameters get a clear 4xx, never a 500.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sciserve.access.tokens import TokenStore
from sciserve.config import Settings
from sciserve.jobs import JobState, JobStore
from sciserve.protocol.rest import create_app
from sciserve.registry.registry import Registry
from sciserve.serving.service import InferenceService

from helpers.batch import archive
from helpers.packages import make_onnx_package
from helpers.server import Running, ServerThread, start_server, stop_server

JOBS = "/v2/sciserve/jobs"
SPEC: dict[str, Any] = {
    "name": "rescore",
    "input": "lsst",
    "columns": ["f0", "f1", "f2", "f3"],
    "id": "obj",
    "models": [{"ref": "alpha/m"}],
}


@dataclass
class World:
    server: Running
    home: Path
    root: Path
    outside: Path
    tokens: dict[str, str]
    token_ids: dict[str, str]

    def client(self, who: str | None = None) -> httpx.Client:
        headers = {} if who is None else {"Authorization": f"Bearer {self.tokens[who]}"}
        return httpx.Client(base_url=f"http://{self.server.http}", headers=headers, timeout=60)


def _home(base: Path) -> tuple[Path, Path, Path]:
    """A registry with alpha/m and beta/b, an archive root and a directory outside it."""
    return _home_on(base, None)


def _home_on(base: Path, database_url: str | None) -> tuple[Path, Path, Path]:
    home, root, outside = base / "home", base / "archives", base / "outside"
    archive(root / "lsst")
    outside.mkdir()
    (outside / "secret.jsonl").write_text('{"obj": 1, "f0": 1, "f1": 2, "f2": 3, "f3": 4}\n')
    # Links inside the root to a file outside it (among good data), and to a
    # directory outside it.
    archive(root / "leaky")
    (root / "leaky" / "night=1" / "leak.jsonl").symlink_to(outside / "secret.jsonl")
    (root / "escape").symlink_to(outside)
    home.mkdir()
    (home / "sciserve.toml").write_text(
        "[jobs]\n"
        f"archives = [{json.dumps(str(root))}, 's3://bucket/archive/']\n"
        "run_in_server = false\n"
        "[clusters.small]\n"
        "kind = 'slurm'\n"
    )
    with Registry(Settings.load(home, environ={}, database_url=database_url)) as reg:
        reg.publish(make_onnx_package(base / "m", name="m", namespace="alpha"))
        reg.publish(make_onnx_package(base / "b", name="b", namespace="beta"))
    return home, root, outside


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("jobs-api")
    home, root, outside = _home(base)
    with Registry(Settings.load(home, environ={})) as reg:
        store = TokenStore(reg)
        minted = {
            "alice": store.create("alice", {"alpha": {"infer"}}),
            "bulk": store.create("bulk", {"alpha": {"infer"}}, priority="batch"),
            "reader": store.create("reader", {"alpha": {"read"}}),
            "other": store.create("other", {"beta": {"infer", "read"}}),
            "admin": store.create("root", {}, admin=True),
        }
    tokens = {who: raw for who, (_, raw) in minted.items()}
    ids = {who: record.token_id for who, (record, _) in minted.items()}
    server = start_server(home, "--auth")
    try:
        yield World(server, home, root, outside, tokens, ids)
    finally:
        stop_server(server.proc)


def _submit(client: httpx.Client, spec: Any = None, **fields: Any) -> httpx.Response:
    body = {"spec": yaml.safe_dump(SPEC) if spec is None else spec, **fields}
    return client.post(JOBS, json=body)


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) <= {"error", "type"}, body
    assert "Traceback" not in body["error"]
    return str(body["error"])


# -- the happy path -----------------------------------------------------------------


def test_a_job_is_submitted_seen_listed_and_logged(world: World) -> None:
    with world.client("alice") as alice:
        created = _submit(alice)
        assert created.status_code == 201, created.text
        job = created.json()
        assert job["state"] == "QUEUED" and job["namespace"] == "alpha"
        assert job["origin"] == "api"  # the runner confines its input again when it runs
        assert job["priority"] == "interactive" and job["id"].startswith("j-")
        # The submitter is the token's id, never its secret.
        assert job["submitter"] == world.token_ids["alice"]
        assert world.tokens["alice"] not in json.dumps(job)
        # What is stored is what was checked: the input resolved under the root.
        stored = yaml.safe_load(job["spec"])
        assert stored["input"] == str((world.root / "lsst").resolve())
        shown = alice.get(f"{JOBS}/{job['id']}")
        assert shown.status_code == 200 and shown.json() == job
        listed = alice.get(JOBS).json()["jobs"]
        assert job["id"] in {j["id"] for j in listed}
        assert all("spec" not in j for j in listed)
        lines = alice.get(f"{JOBS}/{job['id']}/logs").json()["lines"]
        assert [line["message"] for line in lines] == [
            f"submitted by {job['submitter']} (interactive)"
        ]
        later = alice.get(f"{JOBS}/{job['id']}/logs", params={"after": lines[-1]["id"]})
        assert later.json() == {"lines": []}
    with world.client("admin") as admin:
        events = admin.get("/v2/sciserve/registry/events").json()["events"]
    submitted = [e for e in events if e["action"] == "job.submit" and e["subject"] == job["id"]]
    assert len(submitted) == 1 and submitted[0]["actor"] == job["submitter"]


def test_relative_paths_resolve_against_the_first_root_and_yaml_or_objects_both_work(
    world: World,
) -> None:
    with world.client("alice") as alice:
        as_object = _submit(alice, {**SPEC, "input": "lsst/night=1/part-0.parquet"})
        assert as_object.status_code == 201, as_object.text
        stored = yaml.safe_load(as_object.json()["spec"])
        assert stored["input"] == str(world.root.resolve() / "lsst/night=1/part-0.parquet")
        pattern = _submit(alice, {**SPEC, "input": str(world.root / "lsst" / "*" / "*.parquet")})
        assert pattern.status_code == 201, pattern.text


def test_the_priority_class_is_the_tokens_and_may_only_be_lowered(world: World) -> None:
    with world.client("bulk") as bulk, world.client("alice") as alice:
        assert _submit(bulk).json()["priority"] == "batch"
        assert _submit(bulk, priority="realtime").json()["priority"] == "batch"
        assert _submit(alice, priority="batch").json()["priority"] == "batch"
        assert _submit(alice, priority="realtime").json()["priority"] == "interactive"
        assert "unknown priority" in _error(_submit(alice, priority="urgent"), 400)
        assert "'priority' must be a string" in _error(_submit(alice, priority=0), 400)


def test_a_cluster_profile_must_exist(world: World) -> None:
    with world.client("alice") as alice:
        assert _submit(alice, cluster="small").json()["cluster"] == "small"
        assert "no cluster profile 'huge'" in _error(_submit(alice, cluster="huge"), 400)


def test_cancel_and_resume_follow_the_job_state(world: World) -> None:
    with world.client("alice") as alice, world.client("reader") as reader:
        job = _submit(alice).json()
        url = f"{JOBS}/{job['id']}"
        assert "may not infer" in _error(reader.post(url + "/cancel"), 403)
        assert "may not infer" in _error(reader.post(url + "/resume"), 403)
        assert reader.get(url).status_code == 200  # reading needs only "read"
        assert "cannot become QUEUED" in _error(alice.post(url + "/resume"), 409)
        cancelled = alice.post(url + "/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
        assert alice.post(url + "/cancel").json()["state"] == "CANCELLED"  # no-op
        assert "must be a JSON object" in _error(alice.post(url + "/resume", content=b"[]"), 400)
        resumed = alice.post(url + "/resume")
        assert resumed.status_code == 200 and resumed.json()["state"] == "QUEUED"
        # A job that has succeeded cannot be cancelled.
        with Registry(Settings.load(world.home, environ={})) as reg:
            store = JobStore.of(reg)
            claimed = None
            while claimed is None or claimed.id != job["id"]:
                claimed = store.claim("test-runner", namespaces=["alpha"])
                assert claimed is not None
                if claimed.id != job["id"]:  # another test's job: out of the way
                    store.finish(claimed.id, JobState.FAILED, error="set aside by a test")
            store.finish(job["id"], JobState.SUCCEEDED)
        assert "already finished (SUCCEEDED)" in _error(alice.post(url + "/cancel"), 409)
        assert alice.get(url).json()["state"] == "SUCCEEDED"


# -- who may see and do what --------------------------------------------------------


def test_reader_may_not_submit_and_strangers_see_nothing(world: World) -> None:
    with (
        world.client("alice") as alice,
        world.client("reader") as reader,
        world.client("other") as other,
        world.client("admin") as admin,
        world.client() as nobody,
    ):
        assert "may not infer in namespace 'alpha'" in _error(_submit(reader), 403)
        assert _error(_submit(nobody), 401)
        job = _submit(alice).json()
        # Another namespace's token: the job and the model do not exist for it.
        hidden = other.get(f"{JOBS}/{job['id']}")
        missing = other.get(f"{JOBS}/j-0123456789abcdef")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.content == missing.content.replace(b"j-0123456789abcdef", job["id"].encode())
        for suffix in ("/logs", "/cancel", "/resume"):
            method = other.get if suffix == "/logs" else other.post
            assert method(f"{JOBS}/{job['id']}{suffix}").content == hidden.content
        invisible_model = _submit(other)
        ghost_model = _submit(admin, {**SPEC, "models": [{"ref": "alpha/ghost"}]})
        assert invisible_model.status_code == ghost_model.status_code == 404
        assert invisible_model.content == ghost_model.content.replace(b"ghost", b"m")
        # The job's namespace needs "infer" too, and must exist.
        assert _error(_submit(alice, namespace="beta"), 404) == "no namespace 'beta'"
        assert _error(_submit(admin, namespace="zeta"), 404) == "no namespace 'zeta'"
        beta_model = _submit(admin, {**SPEC, "models": [{"ref": "beta/b"}]}, namespace="alpha")
        assert beta_model.json()["namespace"] == "alpha"
        # Listings show only what the caller may see.
        assert {j["namespace"] for j in other.get(JOBS).json()["jobs"]} == set()
        assert {j["namespace"] for j in admin.get(JOBS).json()["jobs"]} == {"alpha"}
        assert other.get(JOBS, params={"namespace": "alpha"}).json() == {
            "error": "no namespace 'alpha'",
            "type": "NotFound",
        }
        assert alice.get(JOBS, params={"namespace": "alpha", "state": "queued,cancelled"}).json()[
            "jobs"
        ]


# -- hostile input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "status", "message"),
    [
        ("../../etc/passwd", 403, "outside the archives"),
        ("lsst/../../outside/secret.jsonl", 403, "outside the archives"),
        ("/etc/passwd", 403, "outside the archives"),
        ("escape/secret.jsonl", 403, "outside the archives"),
        ("escape", 403, "outside the archives"),
        ("leaky/night=1/leak.jsonl", 403, "outside the archives"),
        ("leaky", 403, "holds leak.jsonl, a link to a file outside"),
        ("leaky/*/*.jsonl", 403, "a link to a file outside"),
        ("leaky/**", 403, "a link to a file outside"),
        ("lsst/*/../../../outside/*.jsonl", 403, "must not contain '..'"),
        ("file:///etc/passwd", 403, "outside the archives"),
        ("file://other-host/data/x.parquet", 403, "another host"),
        ("s3://other-bucket/archive/x.parquet", 403, "outside the archives"),
        ("s3://bucket/archive-private/x.parquet", 403, "outside the archives"),
        ("s3://bucket/archive/../private/x.parquet", 403, "'..' segments"),
        ("s3://bucket/archive/%2e%2e/private/x.parquet", 403, "'..' segments"),
        ("s3://bucket/archive/x.parquet::file:///etc/passwd", 403, "chained URLs"),
        ("http://169.254.169.254/latest/meta-data", 403, "outside the archives"),
        ("lsst/nothing-here.parquet", 400, "does not exist"),
        ("lsst/*/*.avro", 400, "matches no files"),
    ],
)
def test_inputs_outside_the_archives_are_refused(
    world: World, location: str, status: int, message: str
) -> None:
    with world.client("alice") as alice:
        response = _submit(alice, {**SPEC, "input": location})
    error = _error(response, status)
    assert message in error
    # Server paths are not told: only their last component.
    assert str(world.root) not in error and str(world.outside) not in error


def test_a_url_under_a_configured_prefix_is_accepted_as_given(world: World) -> None:
    with world.client("alice") as alice:
        response = _submit(alice, {**SPEC, "input": "S3://bucket/archive/2024/"})
    assert response.status_code == 201, response.text
    assert yaml.safe_load(response.json()["spec"])["input"] == "s3://bucket/archive/2024/"


@pytest.mark.parametrize(
    ("spec", "status", "message"),
    [
        ([1, 2], 400, "must be a mapping"),
        ("- a\n- b\n", 400, "must be a mapping"),
        ("name: [unclosed\n", 400, "not valid YAML"),
        ("a: &x 1\nb: *x\n", 400, "anchors and aliases"),
        (42, 400, "must be a mapping"),
        ({**SPEC, "batch": "many"}, 400, "batch"),
        ({**SPEC, "models": []}, 400, "models"),
        ({**SPEC, "out": "/tmp/mine"}, 400, "out"),
        ({**SPEC, "filter": "__import__('os')"}, 400, "filter"),
        ({**SPEC, "models": [{"ref": "../../m"}]}, 400, "not a valid namespace"),
        ({**SPEC, "models": [{"ref": "alpha/m", "server": "http://127.0.0.1:1"}]}, 403, "server"),
        ({**SPEC, "storage_options": {"endpoint_url": "http://127.0.0.1:1"}}, 403, "storage"),
        (
            {
                **{k: v for k, v in SPEC.items() if k not in ("columns", "id")},
                "features": {"python": "/etc/evil.py:f", "namespace": "alpha"},
            },
            403,
            "outside the archives",
        ),
        (
            {
                **{k: v for k, v in SPEC.items() if k not in ("columns", "id")},
                "features": {"python": "feat.py:f", "namespace": "beta"},
            },
            404,
            "no namespace 'beta'",
        ),
    ],
)
def test_invalid_specs_are_refused_with_the_reason(
    world: World, spec: Any, status: int, message: str
) -> None:
    with world.client("alice") as alice:
        assert message in _error(_submit(alice, spec), status)


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"not json", {}, 400, "not valid JSON"),
        (b"[1, 2]", {}, 400, "JSON object"),
        (b"{}", {}, 400, "'spec' is required"),
        (b'{"spec": "x", "output": "/tmp"}', {}, 400, "unknown job field(s) 'output'"),
        (json.dumps({"spec": SPEC, "namespace": 7}).encode(), {}, 400, "'namespace' must be a"),
        (json.dumps({"spec": SPEC, "cluster": []}).encode(), {}, 400, "'cluster' must be a"),
        (b"\xff\xfe{", {}, 400, "not valid JSON"),
        (b"[" * 100_000, {}, 400, "not valid JSON"),
        (b"x" * (300 * 1024), {}, 413, "limit"),
        (b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}, 400, "compressed"),
    ],
)
def test_hostile_bodies_get_a_clear_error(
    world: World, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    with world.client("alice") as alice:
        response = alice.post(JOBS, content=body, headers=headers)
    assert message in _error(response, status)


@pytest.mark.parametrize(
    ("length", "status"),
    # 40 digits: the HTTP parser itself refuses the header.
    [("9" * 40, b"400"), (str(10**12), b"413"), ("1" + "0" * 6, b"413")],
)
def test_a_body_declared_too_long_is_refused_before_it_is_read(
    world: World, length: str, status: bytes
) -> None:
    host, port = world.server.http.rsplit(":", 1)
    head = (
        f"POST {JOBS} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {world.tokens['alice']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(head.encode() + b'{"spec": ')
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:200]


@pytest.mark.parametrize("namespace", ["../etc", "", "A" * 1000])
def test_a_namespace_that_is_no_namespace_is_refused(world: World, namespace: str) -> None:
    with world.client("admin") as admin:
        assert "is not a namespace" in _error(_submit(admin, namespace=namespace), 400)


@pytest.mark.parametrize(
    "job_id",
    ["j-0000000000000000", "..%2Fx", "x", "j-" + "a" * 10_000, "J-0123456789ABCDEF", "%00"],
)
def test_unknown_and_malformed_ids_are_not_found(world: World, job_id: str) -> None:
    with world.client("alice") as alice:
        for suffix, method in (("", "GET"), ("/logs", "GET"), ("/cancel", "POST")):
            response = alice.request(method, f"{JOBS}/{job_id}{suffix}")
            assert response.status_code == 404, (job_id, suffix, response.text)
            assert "Traceback" not in response.text


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "-1"},
        {"limit": "0"},
        {"limit": "abc"},
        {"limit": "1" * 40},
        {"limit": "10001"},
        {"state": "BOGUS"},
        {"state": ""},
        {"namespace": "../x"},
        {"namespace": "n" * 10_000},
        {"colour": "red"},
        {"limit": ["1", "2"]},
    ],
)
def test_bad_listing_parameters_are_refused(world: World, params: dict[str, Any]) -> None:
    with world.client("alice") as alice:
        _error(alice.get(JOBS, params=params), 400)


@pytest.mark.parametrize("after", ["-1", "x", "9" * 40])
def test_bad_log_offsets_are_refused(world: World, after: str) -> None:
    with world.client("alice") as alice:
        job = _submit(alice).json()
        _error(alice.get(f"{JOBS}/{job['id']}/logs", params={"after": after}), 400)


def test_listing_limits_and_filters(world: World) -> None:
    with world.client("alice") as alice:
        for _ in range(2):
            assert _submit(alice).status_code == 201
        two = alice.get(JOBS, params={"limit": "2"}).json()["jobs"]
        assert len(two) == 2 and two[0]["submitted_at"] >= two[1]["submitted_at"]
        running = alice.get(JOBS, params={"state": "RUNNING"}).json()["jobs"]
        assert all(j["state"] == "RUNNING" for j in running)


# -- authentication off ---------------------------------------------------------------


def test_without_auth_the_local_user_submits_and_no_file_is_readable_unless_configured(
    tmp_path: Path,
) -> None:
    home, root, _ = _home(tmp_path)
    with Registry(Settings.load(home, environ={})) as reg:
        service = InferenceService(reg)
        with (
            ServerThread(create_app(service, manage_service=True)) as address,
            httpx.Client(base_url=f"http://{address}", timeout=60) as client,
        ):
            created = _submit(client, priority="realtime")
            assert created.status_code == 201, created.text
            job = created.json()
            assert (job["submitter"], job["priority"]) == ("anonymous", "realtime")
            assert client.get(JOBS).json()["jobs"][0]["id"] == job["id"]
            assert _error(_submit(client, {**SPEC, "input": "/etc/passwd"}), 403)
    # An empty [jobs] archives: nothing may be read at all.
    (home / "sciserve.toml").write_text("[jobs]\nrun_in_server = false\n")
    with Registry(Settings.load(home, environ={})) as reg:
        app = create_app(InferenceService(reg), manage_service=True)
        with (
            ServerThread(app) as address,
            httpx.Client(base_url=f"http://{address}", timeout=60) as client,
        ):
            denied = _submit(client, {**SPEC, "input": str(root / "lsst")})
            assert "[jobs] archives is empty" in _error(denied, 403)


# -- both databases -----------------------------------------------------------------


def test_jobs_through_the_api_on_sqlite_and_postgresql(tmp_path: Path, database_url: str) -> None:
    home, root, _ = _home_on(tmp_path, database_url)
    with Registry(Settings.load(home, environ={}, database_url=database_url)) as reg:
        app = create_app(InferenceService(reg), manage_service=True)
        with (
            ServerThread(app) as address,
            httpx.Client(base_url=f"http://{address}", timeout=60) as client,
        ):
            jobs = [_submit(client).json() for _ in range(3)]
            assert all(job["state"] == "QUEUED" for job in jobs)
            listed = client.get(JOBS, params={"state": "QUEUED", "limit": "2"}).json()["jobs"]
            assert [j["id"] for j in listed] == [jobs[2]["id"], jobs[1]["id"]]
            url = f"{JOBS}/{jobs[0]['id']}"
            assert client.post(url + "/cancel").json()["state"] == "CANCELLED"
            assert client.post(url + "/resume").json()["state"] == "QUEUED"
            messages = [line["message"] for line in client.get(url + "/logs").json()["lines"]]
            assert len(messages) == 3 and messages[-1] == "CANCELLED → QUEUED by anonymous"
            assert yaml.safe_load(jobs[0]["spec"])["input"] == str((root / "lsst").resolve())
