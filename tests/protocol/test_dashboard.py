"""The dashboard against a real ``sciserve serve --auth``, over HTTP.

What its pages show and to whom, how logins and their cookies behave,
CSRF on every form, hostile text in model cards and hostile requests, and
that no API token ever reaches a URL, a page or the server's log.  (The
browser tests are in ``test_dashboard_browser.py``; the authorisation
matrix covers every dashboard route in ``tests/access/test_matrix.py``.)
Every test runs twice: HTTP served in-process, and by two front-end
processes relaying to it (``--http-frontends 2``).
"""

from __future__ import annotations

import html
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import yaml

from sciserve.access.tokens import TokenStore
from sciserve.config import Settings
from sciserve.jobs import JobState, JobStore, ScheduleStore
from sciserve.registry.registry import Registry
from sciserve.streams.metrics import PipelineMetrics, process_identity, status_path, write_status

from helpers.packages import make_onnx_package
from helpers.server import Running, start_server, stop_server

pytestmark = pytest.mark.slow

#: Text an attacker would put in every free-text field of a model card.
SCRIPT = '<script>alert("card")</script>'
IMG = '"><img src=x onerror=alert(1)>'
HOSTILE = {
    "description": f"{SCRIPT} description",
    "intended_use": f"{IMG} intended use",
    "limitations": "<iframe src=//evil></iframe> limitations",
    "tags": ["<svg/onload=alert(1)>"],
    "authors": [{"name": IMG, "affiliation": "<b>affiliation</b>"}],
    "citation": {"text": SCRIPT, "doi": f"10.1234/{IMG}"},
    # The registry takes only DOIs and URLs here, but they may still carry markup.
    "training_data": [
        {
            "name": "<i>data</i>",
            "identifier": 'urn:x:"><script>alert(1)</script>',
            "description": SCRIPT,
        }
    ],
    "validation_data": [{"identifier": 'https://example.org/"><svg/onload=alert(2)>'}],
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4], "description": IMG}],
}
JOB_SPEC = {
    "name": "dashboard",
    "input": "lsst",
    "columns": ["f0", "f1", "f2", "f3"],
    "id": "obj",
    "models": [{"ref": "alpha/m"}],
}
#: The jobs of the world: a failed one of alpha, a finished one of beta.
JOBS: dict[str, str] = {}
INFER_BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


@dataclass
class World:
    server: Running
    base: str
    log: Path
    alpha: str  # a token of namespace alpha (read, infer)
    beta: str  # a token of namespace beta
    admin: str
    revoked: str

    def bearer(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


def _stream_workers(home: Path) -> None:
    """Status files as pipeline workers write them: one running (this very
    process stands in for it) and one whose process is gone."""
    running = {**process_identity(), "name": "alerts", "state": "running"}
    metrics = PipelineMetrics("alerts")
    metrics.consumed(42)
    metrics.set_lag(7)
    # Dead letters carry whatever the stream sent: their reasons quote it.
    metrics.dead_lettered("decode", error="bad-magic", reason=f"not Avro: {IMG}")
    metrics.dead_lettered("decode", error="truncated", reason="ends at byte 12")
    metrics.dead_lettered("model", error=f"model-error{IMG}", reason=SCRIPT, alert_id=170)
    write_status(
        status_path(home, "alerts", os.getpid()),
        {**running, "source": f"kafka://127.0.0.1:9092/{SCRIPT}", **metrics.snapshot()},
    )
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = {"pid": gone.pid, "host": socket.gethostname(), "started": 1, "name": "ztf"}
    write_status(status_path(home, "ztf", gone.pid), {**dead, "state": "running"})


@pytest.fixture(scope="module", params=["in-process", "front-ends"])
def world(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[World]:
    work = tmp_path_factory.mktemp("dashboard")
    home = work / "home"
    with Registry(Settings.load(home, environ={})) as reg:
        reg.publish(make_onnx_package(work / "m", name="m", namespace="alpha"))
        reg.publish(make_onnx_package(work / "xss", name="xss", namespace="alpha", extra=HOSTILE))
        reg.publish(make_onnx_package(work / "b", name="b", namespace="beta"))
        tokens = TokenStore(reg)
        alpha = tokens.create("alice", {"alpha": ["read", "infer"]})[1]
        beta = tokens.create("bob", {"beta": ["read", "infer"]})[1]
        admin = tokens.create("root", {}, admin=True)[1]
        record, revoked = tokens.create("eve", {"alpha": ["read"]})
        tokens.revoke(record.token_id)
        jobs = JobStore.of(reg)
        failed = jobs.submit(yaml.safe_dump(JOB_SPEC), namespace="alpha", submitter="alice")
        assert jobs.claim("runner-1", namespaces=["alpha"]) is not None
        jobs.log(failed.id, f"shard 3: {SCRIPT}", level="error")
        out = work / "job-output"
        out.mkdir()
        jobs.progress(failed.id, out_dir=str(out), shards_total=4, shards_done=3, dead_letters=2)
        (out / "shard-0.dead.jsonl").write_text(
            json.dumps({"row_id": IMG, "shard_id": "0", "stage": "model", "error": SCRIPT})
            + "\n{not json\n"
            + json.dumps({"row_id": "obj-2", "stage": "features", "reason": "missing f3"})
            + "\n"
        )
        jobs.finish(failed.id, JobState.FAILED, error=f"dead letter {IMG}")
        done = jobs.submit(yaml.safe_dump(JOB_SPEC), namespace="beta", submitter="bob")
        assert jobs.claim("runner-1", namespaces=["beta"]) is not None
        jobs.finish(done.id, JobState.SUCCEEDED)
        schedules = ScheduleStore(jobs.engine)
        for namespace in ("alpha", "beta"):
            schedules.add(
                f"nightly-{namespace}",
                yaml.safe_dump(JOB_SPEC),
                namespace=namespace,
                owner="ops",
                cron="0 2 * * *",
                timezone="UTC",
            )
    _stream_workers(home)
    log = work / "server.log"
    frontends = ["--http-frontends", "2"] if request.param == "front-ends" else []
    server = start_server(home, "--auth", *frontends, stderr_file=log)
    JOBS.update(failed=failed.id, done=done.id)
    try:
        # Once the server is up (it would never be ready otherwise): a version
        # that cannot load here, which the health report explains.
        with Registry(Settings.load(home, environ={})) as reg:
            broken = {"device": "cuda:0"}
            reg.publish(
                make_onnx_package(work / "broken", name="broken", namespace="alpha", extra=broken)
            )
        yield World(server, f"http://{server.http}", log, alpha, beta, admin, revoked)
    finally:
        stop_server(server.proc)


def _rows(page: str) -> set[str]:
    return set(re.findall(r'data-namespace="([^"]+)" data-name="([^"]+)"', page))


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match is not None, page
    return match.group(1)


def _login(client: httpx.Client, token: str) -> httpx.Response:
    page = client.get("/login")
    assert page.status_code == 200
    return client.post("/login", data={"csrf": _csrf(page.text), "token": token})


def _scripts_are_only_the_dashboards(page: str) -> None:
    assert page.count("<script") == 1
    assert '<script src="/ui/static/dashboard.js" defer></script>' in page
    for tag in ("<img", "<iframe", "<svg/", "<b>", "<i>"):
        assert tag not in page
    assert "javascript:" not in page
    assert not re.search(r"<[^>]*\son\w+=", page), "an event handler attribute got through"


# -- what pages show, and to whom ---------------------------------------------------


def test_the_catalogue_lists_what_the_token_may_see(world: World) -> None:
    with httpx.Client(base_url=world.base) as client:
        alpha = client.get("/", headers=world.bearer(world.alpha))
        admin = client.get("/", headers=world.bearer(world.admin))
    assert alpha.status_code == admin.status_code == 200
    assert _rows(alpha.text) == {("alpha", "m"), ("alpha", "xss"), ("alpha", "broken")}
    assert _rows(admin.text) == _rows(alpha.text) | {("beta", "b")}
    assert "beta" not in alpha.text  # not even as a filter option


def test_catalogue_filters_work_without_script(world: World) -> None:
    with httpx.Client(base_url=world.base, headers=world.bearer(world.admin)) as client:

        def rows(**params: str) -> set[tuple[str, str]]:
            response = client.get("/", params=params)
            assert response.status_code == 200
            return _rows(response.text)

        # Every test model but the hostile one is described as "y = x @ W + b".
        assert rows(q="W + b") == rows() - {("alpha", "xss")}
        assert rows(q="XSS") == {("alpha", "xss")}
        assert rows(namespace="beta") == {("beta", "b")}
        assert rows(namespace="zeta") == set()
        assert rows(runtime="onnx") == rows()
        assert rows(runtime="torchscript") == set()
        assert rows(license="MIT") == rows()
        assert rows(license="Apache-2.0") == set()
        assert rows(tag="<svg/onload=alert(1)>") == {("alpha", "xss")}
        assert rows(alias="latest") == rows()
        assert rows(alias="stable") == set()


def test_a_filter_on_an_invisible_namespace_looks_empty(world: World) -> None:
    with httpx.Client(base_url=world.base, headers=world.bearer(world.alpha)) as client:
        hidden = client.get("/", params={"namespace": "beta"})
        absent = client.get("/", params={"namespace": "zeta"})
    assert hidden.status_code == absent.status_code == 200
    assert _rows(hidden.text) == _rows(absent.text) == set()


def test_a_model_page_shows_the_card_and_snippets_that_work(world: World) -> None:
    with httpx.Client(base_url=world.base, headers=world.bearer(world.alpha)) as client:
        page = client.get("/models/alpha/m")
        assert page.status_code == 200
        text = page.text
        assert "https://orcid.org/0000-0002-1825-0097" in text
        assert "https://spdx.org/licenses/MIT.html" in text
        assert "@software{alpha_m_1_0_0," in text
        assert 'id="live" data-url="/ui/live/alpha.m"' in text
        assert "Monitoring is off on this server" in text
        curl = re.search(r'<pre id="snippet-curl">(.*?)</pre>', text, re.S)
        assert curl is not None
        url = re.search(r"(http://\S+/infer)", curl.group(1))
        assert (
            url is not None
            and url.group(1) == f"{world.base}/v2/models/alpha.m/versions/1.0.0/infer"
        )
        # The token is named, never written: $SCISERVE_TOKEN.
        assert "$SCISERVE_TOKEN" in curl.group(1)
        answer = client.post(url.group(1), json=INFER_BODY)
        assert answer.status_code == 200
        assert answer.json()["outputs"][0]["data"] == [61.0, 71.0, 81.0]
        # The tritonclient snippet runs as written too, the token from the environment.
        python = re.search(r'<pre id="snippet-tritonclient">(.*?)</pre>', text, re.S)
        assert python is not None
        ran = subprocess.run(
            [sys.executable, "-c", html.unescape(python.group(1))],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "SCISERVE_TOKEN": world.alpha},
            check=False,
        )
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.split() == ["[[1.", "1.", "1.]]"]  # zeros in: the bias out
        for selector in ("1.0.0", "latest"):
            assert client.get("/models/alpha/m", params={"version": selector}).status_code == 200
        other = client.get("/models/alpha/m", params={"version": "9.9.9"})
        assert other.status_code == 404
        assert "alpha/m has no version or alias &#39;9.9.9&#39;" in other.text


def test_a_model_the_token_may_not_see_is_a_missing_model(world: World) -> None:
    with httpx.Client(base_url=world.base, headers=world.bearer(world.alpha)) as client:
        hidden = client.get("/models/beta/b")
        absent = client.get("/models/zeta/b")
        live_hidden = client.get("/ui/live/beta.b")
        live_absent = client.get("/ui/live/zeta.b")
    assert hidden.status_code == absent.status_code == 404
    assert hidden.text == absent.text.replace("zeta", "beta")
    assert live_hidden.status_code == live_absent.status_code == 404
    assert live_hidden.text == live_absent.text.replace("zeta", "beta")


def _answered(live: dict[str, Any]) -> int:
    buckets = live["latency_buckets"]
    return int(buckets[-1][1]) if buckets else 0


def test_live_numbers_follow_the_requests(world: World) -> None:
    with httpx.Client(base_url=world.base, headers=world.bearer(world.alpha)) as client:
        before = client.get("/ui/live/alpha.m").json()
        for _ in range(5):
            assert client.post("/v2/models/alpha.m/infer", json=INFER_BODY).status_code == 200
        wrong = {"inputs": [{**INFER_BODY["inputs"][0], "name": "z"}]}
        for _ in range(2):
            assert client.post("/v2/models/alpha.m/infer", json=wrong).status_code == 400
        after = client.get("/ui/live/alpha.m").json()
    assert after["requests"] == before["requests"] + 7
    assert after["failures"] == before["failures"] + 2
    assert after["rows"] == before["rows"] + 5
    assert after["errors"] == [["InvalidInput", 400, 2]]
    assert after["latency_buckets"][-1][0] is None  # +Inf: every request
    assert _answered(after) == _answered(before) + 5
    assert sum(count for _, count in after["batch_sizes"]) >= 1
    assert after["queue_depth"] == 0
    assert after["versions"] == [{"version": "1.0.0", "state": "READY", "reason": ""}]
    # This server does not monitor drift, and the page says so rather than showing nothing.
    assert after["drift"] == {"enabled": False, "versions": []}


def test_health_says_what_is_wrong_and_what_to_do(world: World) -> None:
    with httpx.Client(base_url=world.base) as client:
        deadline = time.monotonic() + 60
        while True:  # the server picks the new version up within its poll interval
            alpha = client.get("/v2/sciserve/health", headers=world.bearer(world.alpha)).json()
            if alpha["problems"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        beta = client.get("/v2/sciserve/health", headers=world.bearer(world.beta)).json()
        page = client.get("/health", headers=world.bearer(world.alpha))
    assert alpha["status"] == "degraded"
    assert alpha["checks"] == {
        "database": "ok",
        "artifact_store": "ok",
        "disk": "ok",
        "models": "problem",
        "jobs": "problem",
    }
    problems = {p["component"]: p for p in alpha["problems"]}
    assert set(problems) == {"model", "job"} and len(alpha["problems"]) == 2
    model = problems["model"]
    assert "alpha.broken" in model["message"] and "cuda" in model["message"].lower()
    assert "publish a new version" in model["action"]
    job = problems["job"]
    assert JOBS["failed"] in job["message"] and "dead letter" in job["message"]
    assert f"sciserve jobs resume {JOBS['failed']}" in job["action"]
    assert {m["namespace"] for m in alpha["models"]} == {"alpha"}
    # Another namespace's failure is not beta's business.
    assert beta["status"] == "ok" and beta["problems"] == []
    assert {m["name"] for m in beta["models"]} == {"beta.b"}
    assert page.status_code == 200 and "alpha.broken" in page.text and "What to do" in page.text


def _jobs(page: str) -> set[str]:
    return set(re.findall(r'data-job="([^"]+)"', page))


def _schedules(page: str) -> set[str]:
    return set(re.findall(r'data-schedule="([^"]+)"', page))


def test_jobs_show_progress_and_failures_to_their_namespace_only(world: World) -> None:
    failed, done = JOBS["failed"], JOBS["done"]
    with httpx.Client(base_url=world.base) as client:
        alpha, admin = world.bearer(world.alpha), world.bearer(world.admin)
        mine, everything = client.get("/jobs", headers=alpha), client.get("/jobs", headers=admin)
        assert _jobs(mine.text) == {failed}
        assert _jobs(everything.text) == {failed, done}
        assert _schedules(mine.text) == {"nightly-alpha"}
        assert _schedules(everything.text) == {"nightly-alpha", "nightly-beta"}
        assert "0 2 * * * (UTC)" in mine.text
        only_failed = client.get("/jobs", params={"state": "FAILED"}, headers=admin)
        assert _jobs(only_failed.text) == {failed}
        assert client.get("/jobs", params={"state": "bogus"}, headers=admin).status_code == 400
        page = client.get(f"/jobs/{failed}", headers=alpha)
        assert page.status_code == 200
        _scripts_are_only_the_dashboards(page.text)
        # The failure and the log are shown, as text.
        assert "dead letter &#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page.text
        assert "shard 3: &lt;script&gt;alert(&#34;card&#34;)&lt;/script&gt;" in page.text
        assert f"sciserve jobs resume {failed}" in page.text
        # Its dead letters, as text: the garbled line is skipped.
        assert page.text.count('<tr class="dead-letter">') == 2
        assert "&lt;script&gt;alert(&#34;card&#34;)&lt;/script&gt;" in page.text
        assert "missing f3" in page.text and "3 of 4 shards" in page.text
        hidden = client.get(f"/jobs/{done}", headers=alpha)
        missing = client.get("/jobs/j-0000000000000000", headers=admin)
        assert hidden.status_code == missing.status_code == 404
        assert hidden.text == missing.text.replace("j-0000000000000000", done)
        odd = client.get("/jobs/%3Cscript%3E", headers=admin)
        assert odd.status_code == 404 and "<script>" not in odd.text


def test_the_benchmarks_page_says_there_is_nothing_yet(world: World) -> None:
    page = httpx.get(f"{world.base}/benchmarks", headers=world.bearer(world.alpha))
    assert page.status_code == 200
    assert 'id="no-evaluations"' in page.text and "sciserve evaluate" in page.text
    assert httpx.get(f"{world.base}/benchmarks").status_code == 401


def test_admins_see_usage_and_the_audit_trail_and_nobody_else_does(world: World) -> None:
    with httpx.Client(base_url=world.base) as client:
        for _ in range(3):
            infer = client.post(
                "/v2/models/alpha.m/infer", json=INFER_BODY, headers=world.bearer(world.alpha)
            )
            assert infer.status_code == 200
        refused = client.get("/admin", headers=world.bearer(world.alpha))
        assert refused.status_code == 403
        assert "usage" not in refused.text.lower()
        assert client.get("/admin").status_code == 401
        deadline = time.monotonic() + 60
        while True:  # usage reaches the database on the server's flush interval
            page = client.get("/admin", headers=world.bearer(world.admin))
            assert page.status_code == 200
            if 'class="usage-row" data-namespace="alpha"' in page.text:
                break
            assert time.monotonic() < deadline, "no usage shown"
            time.sleep(0.5)
    # The denied requests above are in the audit trail, the tokens are not.
    assert "GET /admin" in page.text and "forbidden" in page.text
    for token in (world.alpha, world.admin):
        assert token not in page.text


def test_admins_see_stream_workers_and_the_ones_that_died(world: World) -> None:
    with httpx.Client(base_url=world.base) as client:
        page = client.get("/streams", headers=world.bearer(world.admin))
        assert client.get("/streams", headers=world.bearer(world.alpha)).status_code == 403
        health = client.get("/v2/sciserve/health", headers=world.bearer(world.admin)).json()
        alpha = client.get("/v2/sciserve/health", headers=world.bearer(world.alpha)).json()
    assert page.status_code == 200
    assert set(re.findall(r'data-stream="([^"]+)"', page.text)) == {"alerts", "ztf"}
    _scripts_are_only_the_dashboards(page.text)
    assert "kafka://127.0.0.1:9092/&lt;script&gt;" in page.text
    # Dead letters by stage, and the newest ones with their reasons, rendered inert.
    by_stage = re.findall(r'data-stage="([^"]+)">[^<]* (\d+)</span>', page.text)
    assert by_stage == [("decode", "2"), ("model", "1")]
    reasons = re.findall(r'<td class="reason">([^<]*)</td>', page.text)
    assert reasons == [
        "&lt;script&gt;alert(&#34;card&#34;)&lt;/script&gt;",
        "ends at byte 12",
        "not Avro: &#34;&gt;&lt;img src=x onerror=alert(1)&gt;",
    ]
    assert "model-error&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page.text
    [stream] = [p for p in health["problems"] if p["component"] == "stream"]
    assert "pipeline ztf" in stream["message"] and "gone" in stream["message"]
    assert "sciserve stream run" in stream["action"]
    assert health["checks"]["streams"] == "problem"
    assert not any(p["component"] == "stream" for p in alpha["problems"])
    assert "streams" in alpha["not_checked"]


# -- logins --------------------------------------------------------------------------


def _cookie_flags(header: str) -> set[str]:
    return {part.strip().lower() for part in header.split(";")[1:]}


def test_login_sets_a_strict_http_only_cookie_and_logout_clears_it(world: World) -> None:
    with httpx.Client(base_url=world.base) as client:
        assert client.get("/").status_code == 401
        answer = _login(client, world.alpha)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/"
        [session] = [
            h for h in answer.headers.get_list("set-cookie") if h.startswith("sciserve_session=")
        ]
        flags = _cookie_flags(session)
        assert {"httponly", "samesite=strict", "path=/"} <= flags
        assert "secure" not in flags  # plain HTTP: a Secure cookie would never come back
        assert not any(f.startswith(("max-age", "expires")) for f in flags)
        home = client.get("/")
        assert home.status_code == 200
        assert _rows(home.text) == {("alpha", "m"), ("alpha", "xss"), ("alpha", "broken")}
        for path in ("/", "/models/alpha/m", "/health", "/login"):
            page = client.get(path)
            assert page.status_code == 200
            assert world.alpha not in page.text
        assert client.post("/logout", data={"csrf": _csrf(home.text)}).status_code == 303
        assert client.get("/").status_code == 401


def test_logging_in_as_another_namespace_shows_only_its_models(world: World) -> None:
    with httpx.Client(base_url=world.base) as client:
        assert _login(client, world.beta).status_code == 303
        assert _rows(client.get("/").text) == {("beta", "b")}
        assert client.get("/models/alpha/m").status_code == 404


@pytest.mark.parametrize("token", ["", "ssv_not-a-token", "a b\r\nSet-Cookie: x=y", "revoked"])
def test_a_bad_token_is_refused_and_not_echoed(world: World, token: str) -> None:
    token = world.revoked if token == "revoked" else token
    with httpx.Client(base_url=world.base) as client:
        answer = _login(client, token)
        assert answer.status_code == 401
        assert 'id="login-error"' in answer.text
        if token:
            assert token not in answer.text
        assert "sciserve_session" not in answer.headers.get("set-cookie", "")
        assert client.get("/").status_code == 401


def test_a_revoked_session_ends_at_once(world: World) -> None:
    with httpx.Client(base_url=world.base) as client:
        client.cookies.set("sciserve_session", world.revoked)
        answer = client.get("/")
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert 'href="/login"' in answer.text
        # The dead cookie is cleared.
        assert 'sciserve_session=""' in answer.headers["set-cookie"]


def test_every_form_needs_its_csrf_token(world: World) -> None:
    with httpx.Client(base_url=world.base) as client:
        page = client.get("/login")
        login_csrf = _csrf(page.text)
        for data in ({"token": world.alpha}, {"token": world.alpha, "csrf": "x" * 43}):
            assert client.post("/login", data=data).status_code == 403
        # The login form's value is bound to this browser's cookie.
        with httpx.Client(base_url=world.base) as stranger:
            stolen = stranger.post("/login", data={"csrf": login_csrf, "token": world.alpha})
            assert stolen.status_code == 403
        assert _login(client, world.alpha).status_code == 303
        home = client.get("/")
        assert client.post("/logout").status_code == 403
        assert client.post("/logout", data={"csrf": login_csrf}).status_code == 403
        assert client.get("/").status_code == 200  # still logged in
        assert client.post("/logout", data={"csrf": _csrf(home.text)}).status_code == 303


def test_the_session_cookie_is_secure_under_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    home = tmp_path / "home"
    with Registry(Settings.load(home, environ={})) as reg:
        reg.publish(make_onnx_package(tmp_path / "m", name="m", namespace="alpha"))
        token = TokenStore(reg).create("tls", {"alpha": ["read"]})[1]
    context = ssl.create_default_context()
    ca.configure_trust(context)
    tls = ["--auth", "--tls-cert", str(cert_file), "--tls-key", str(key_file)]
    server = start_server(home, *tls, ssl_context=context)
    try:
        with httpx.Client(base_url=f"https://{server.http}", verify=context) as client:
            page = client.get("/login")
            assert "secure" in _cookie_flags(page.headers["set-cookie"])
            answer = client.post("/login", data={"csrf": _csrf(page.text), "token": token})
            assert answer.status_code == 303
            [session] = [
                h
                for h in answer.headers.get_list("set-cookie")
                if h.startswith("sciserve_session=")
            ]
            assert {"secure", "httponly", "samesite=strict", "path=/"} <= _cookie_flags(session)
            assert _rows(client.get("/").text) == {("alpha", "m")}
    finally:
        stop_server(server.proc)


def test_without_authentication_every_page_is_open_and_login_is_not_needed(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    with Registry(Settings.load(home, environ={})) as reg:
        reg.publish(make_onnx_package(tmp_path / "m", name="m", namespace="alpha"))
        reg.publish(make_onnx_package(tmp_path / "b", name="b", namespace="beta"))
    server = start_server(home)
    try:
        with httpx.Client(base_url=f"http://{server.http}") as client:
            assert _rows(client.get("/").text) == {("alpha", "m"), ("beta", "b")}
            page = client.get("/models/alpha/m")
            assert page.status_code == 200
            assert "SCISERVE_TOKEN" not in page.text and 'href="/login"' not in page.text
            login = client.get("/login")
            assert "runs without authentication" in login.text
            assert client.post("/login", data={"token": "x"}).status_code == 403
            csrf = login.cookies["sciserve_login"]
            answer = client.post("/login", data={"csrf": csrf, "token": "x"})
            assert answer.status_code == 303 and answer.headers["location"] == "/"
            assert "sciserve_session" not in answer.headers.get("set-cookie", "")
            assert client.get("/v2/sciserve/health").json()["status"] == "ok"
    finally:
        stop_server(server.proc)


# -- hostile input ---------------------------------------------------------------------


def test_hostile_card_text_is_rendered_inert(world: World) -> None:
    with httpx.Client(base_url=world.base, headers=world.bearer(world.alpha)) as client:
        page = client.get("/models/alpha/xss")
        catalogue = client.get("/")
    assert page.status_code == catalogue.status_code == 200
    for text in (page.text, catalogue.text):
        _scripts_are_only_the_dashboards(text)
    assert "&lt;script&gt;alert(&#34;card&#34;)&lt;/script&gt; description" in page.text
    assert "&lt;i&gt;data&lt;/i&gt;" in page.text
    assert 'href="urn:x:&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in page.text
    assert "&lt;svg/onload=alert(1)&gt;" in catalogue.text


def test_hostile_requests_get_clear_answers(world: World) -> None:
    bearer = world.bearer(world.alpha)
    cases: list[tuple[str, str, dict[str, object], int]] = [
        ("GET", "/?q=" + "x" * 5000, {}, 400),
        ("GET", "/?q=%3Cscript%3Ealert(1)%3C/script%3E", {}, 200),
        ("GET", "/?namespace=%00%ff", {}, 200),
        ("GET", "/models/alpha/%3Cscript%3E", {}, 404),
        ("GET", "/models/alpha/..%2F..%2Fetc", {}, 404),
        ("GET", "/models/alpha/" + "m" * 5000, {}, 404),
        ("GET", "/models/alpha/m?version=" + "9" * 5000, {}, 400),
        ("GET", "/models/alpha/m?version=%3Cimg%3E", {}, 404),
        ("GET", "/ui/live/" + "m" * 5000, {}, 404),
        ("GET", "/ui/static/..%2F..%2Fetc%2Fpasswd", {}, 404),
        ("GET", "/ui/static/dashboard.py", {}, 404),
        ("POST", "/login", {"content": b"csrf=" + b"x" * 100_000}, 400),
        ("POST", "/login", {"content": b"\xff\xfe\x00garbage"}, 400),
        ("POST", "/login", {"content": "&".join(f"f{i}=1" for i in range(1000)).encode()}, 400),
        ("POST", "/login", {"json": {"token": "x"}}, 400),
        ("POST", "/logout", {"content": b"csrf=%ZZ"}, 403),
    ]
    with httpx.Client(base_url=world.base) as client:
        for method, path, kwargs, status in cases:
            answer = client.request(method, path, headers=bearer, **kwargs)  # type: ignore[arg-type]
            where = f"{method} {path[:60]}"
            assert answer.status_code == status, (where, answer.text[:300])
            assert "Traceback" not in answer.text, where
            if "<script" in answer.text:
                _scripts_are_only_the_dashboards(answer.text)
            assert "<img" not in answer.text, where
    with httpx.Client(base_url=world.base) as client:
        client.cookies.set("sciserve_session", "x" * 10_000)
        assert client.get("/").status_code == 401


def test_pages_forbid_foreign_scripts_and_framing(world: World) -> None:
    page = httpx.get(f"{world.base}/login")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    script = httpx.get(f"{world.base}/ui/static/dashboard.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith(
        "text/javascript"
    )
    # Nothing is fetched from elsewhere: every script and style sheet is the server's own.
    for asset in re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page.text):
        assert asset.startswith("/ui/static/")


def test_no_token_ever_reaches_the_server_log(world: World) -> None:
    # Every test above has run by now (module order): their logins, failed
    # logins and requests are all in the log.
    with httpx.Client(base_url=world.base) as client:
        _login(client, world.admin)
        client.get("/")
    log = world.log.read_text(errors="replace")
    assert log.strip(), "the server logged nothing at all"
    for token in (world.alpha, world.beta, world.revoked):
        assert token not in log
    assert world.admin not in log
