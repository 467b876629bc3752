"""The authorization matrix: every endpoint against every kind of credential.

One real ``sciserve serve --auth`` process (SQLite registry) serves three
models: ``alpha/m`` (inference and model metadata), ``alpha/pub`` (versions
1.0.0, aliased ``stable``, and 2.0.0: the registry's changing routes and
load/unload) and ``beta/b``, and batch jobs of ``alpha``, ``beta`` and ``zeta`` (a namespace
the registry does not have).  Every REST route is taken from the Starlette
application and every gRPC method from the service descriptors, so an
endpoint added without an expectation here fails the test.

The registry also holds ``default/alpha.m`` and ``default/beta.b``, left by
an older release that accepted dots in names of ``default`` (publishing
refuses them now): by the name alone they would be served as ``alpha.m`` and
``beta.b`` too.  They are not served, and each served name means the one
model of ``alpha`` or ``beta`` whoever asks, over REST, gRPC and the
registry API.

Each cell's expected answer follows from one rule (:func:`expected`):

* public endpoints answer normally whoever asks;
* missing, malformed, unknown, expired or revoked credentials and bad JWTs
  are 401 / UNAUTHENTICATED;
* a caller without any scope in ``alpha`` gets 404 / NOT_FOUND, with the very
  body a truly missing model gets;
* a caller with some scope in ``alpha`` but not the one needed gets 403 /
  PERMISSION_DENIED;
* otherwise the endpoint's normal answer, and listings show exactly the
  namespaces the caller may see.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import httpx
import jwt
import numpy as np
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.routing import Route
from tritonclient.grpc import service_pb2

import sciserve
from sciserve.access.tokens import TokenStore
from sciserve.config import Settings
from sciserve.evaluation import registered
from sciserve.jobs import JobStore
from sciserve.package.archive import pack
from sciserve.protocol.rest import create_app
from sciserve.registry import db as registry_db
from sciserve.registry.registry import Registry
from sciserve.serving.service import InferenceService

from helpers.batch import archive as write_archive
from helpers.datasets import CLASSES, make_dataset
from helpers.legacy import insert_legacy_version
from helpers.packages import expected_linear, make_onnx_package, make_softmax_package
from helpers.server import Running, start_server, stop_server

pytestmark = pytest.mark.slow

ISSUER = "https://iam.example.org/"
ROGUE_ISSUER = "https://rogue.example.org/"
SCOPES = frozenset({"read", "infer", "publish", "admin"})
REGISTRY = "/v2/sciserve/registry"
INFERENCE = "inference.GRPCInferenceService"
HEALTH = "grpc.health.v1.Health"
#: The name every "truly missing model" request uses instead of the real one.
GHOST = "ghost"
#: Models of `default` whose names, by an old rule, are the served names of alpha/m and beta/b.
LEGACY = (("default", "alpha.m"), ("default", "beta.b"))
LEGACY_SCALE = 3.0
#: The namespaces whose models a server serves, and those the registry holds.
SERVED_NAMESPACES = ("alpha", "beta")
REGISTRY_NAMESPACES = ("alpha", "beta", "default")


# -- credentials ---------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    """One column of the matrix: an ``Authorization`` value and what it grants.

    ``grants`` is ``None`` for credentials the server must reject outright.
    """

    header: str | None
    grants: dict[str, frozenset[str]] | None

    def scopes_in(self, namespace: str) -> frozenset[str]:
        grants = self.grants or {}
        return grants.get(namespace, frozenset()) | grants.get("*", frozenset())

    def sees(self, namespace: str) -> bool:
        return bool(self.scopes_in(namespace))

    def may(self, scope: str, namespace: str) -> bool:
        held = self.scopes_in(namespace)
        # Any scope in a namespace lets its holder see (read) it; admin allows everything.
        return scope in held or "admin" in held or (scope == "read" and bool(held))


class Outcome(Enum):
    OK = "ok"
    UNAUTHENTICATED = "401"
    FORBIDDEN = "403"
    NOT_FOUND = "404"
    UNIMPLEMENTED = "unimplemented"


@dataclass(frozen=True)
class Target:
    """What an endpoint acts on, which decides how credentials are judged.

    ``kind`` is ``public``, ``model`` (a model of ``alpha``), ``publish`` (the
    namespace named inside the uploaded package: ``alpha``), ``listing``
    (filtered to what the caller sees), ``global`` (``admin`` on ``*``) or
    ``unimplemented``.
    """

    kind: str
    scope: str = "read"


PUBLIC = Target("public")
LISTING = Target("listing")
UNIMPLEMENTED = Target("unimplemented")


def expected(target: Target, cred: Credential) -> Outcome:
    """The one rule of the matrix (see the module docstring)."""
    if target.kind == "public":
        return Outcome.OK
    if target.kind == "unimplemented":
        return Outcome.UNIMPLEMENTED
    if cred.grants is None:
        return Outcome.UNAUTHENTICATED
    if target.kind == "listing":
        return Outcome.OK
    if target.kind == "global":
        return Outcome.OK if "admin" in cred.grants.get("*", ()) else Outcome.FORBIDDEN
    if not cred.sees("alpha"):
        return Outcome.NOT_FOUND
    return Outcome.OK if cred.may(target.scope, "alpha") else Outcome.FORBIDDEN


# -- the server ------------------------------------------------------------------


@dataclass
class World:
    server: Running
    creds: dict[str, Credential]
    archive: bytes
    admin: str
    #: A second server on the same registry, its gRPC and HTTP served by
    #: front-end processes.
    relayed: Running
    #: The archive of the dataset ``alpha/ds:1.0.0``.
    dataset_archive: bytes = b""

    def grpc(self, mode: str) -> str:
        return self.relayed.grpc if mode == "front-end" else self.server.grpc

    def http(self, mode: str) -> str:
        return self.relayed.http if mode == "front-end" else self.server.http


def _jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, "use": "sig", "alg": "ES256"}


def _jwt(key: ec.EllipticCurvePrivateKey, issuer: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": issuer, "sub": "carol", "iat": now, "exp": now + 3600, **claims}
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": "k1"})


def _build(home: Path, work: Path) -> tuple[dict[str, Credential], bytes, bytes]:
    """Packages, issuer keys, settings and tokens; returns the credentials and
    the archives of ``alpha/pub:1.0.0`` and of the dataset ``alpha/ds:1.0.0``."""
    key, stranger = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    jwks = work / "jwks.json"
    jwks.write_text(json.dumps({"keys": [_jwk(key, "k1")]}))
    home.mkdir(parents=True)
    (home / "sciserve.toml").write_text(
        "[access]\n"
        "[[access.issuers]]\n"
        f'issuer = "{ISSUER}"\n'
        f"jwks_file = {json.dumps(str(jwks))}\n"
        'algorithms = ["ES256"]\n'
        'group_map = { "/alpha" = "alpha" }\n'
        "[monitoring]\nenabled = true\n"
        # Jobs stay where the cells put them: no runner executes them here.
        "[jobs]\n"
        f"archives = [{json.dumps(str(work / 'archives'))}]\n"
        "run_in_server = false\n"
    )
    write_archive(work / "archives" / "lsst")
    pub = make_onnx_package(work / "pub1", name="pub", namespace="alpha")
    archive = pack(pub, work / "pub1.tar.gz").read_bytes()
    ds = make_dataset(work / "ds1", name="ds", namespace="alpha")
    dataset_archive = pack(ds, work / "ds1.tar.gz").read_bytes()
    with Registry(Settings.load(home, environ={})) as reg:
        reg.publish(make_onnx_package(work / "m", name="m", namespace="alpha"))
        reg.publish(pub)
        reg.publish(
            make_onnx_package(work / "pub2", name="pub", namespace="alpha", version="2.0.0")
        )
        reg.tag("alpha/pub:1.0.0", "stable")
        # A dataset beside the models, under the same rules: alpha/ds 1.0.0
        # (aliased stable) and 2.0.0.
        reg.publish(ds)
        reg.publish(
            make_dataset(work / "ds2", name="ds", namespace="alpha", version="2.0.0", offset=1.0)
        )
        reg.tag("alpha/ds:1.0.0", "stable")
        reg.publish(make_onnx_package(work / "b", name="b", namespace="beta"))
        # Evaluations of models of both namespaces on one dataset: a
        # leaderboard shows each caller only the models it may see.
        for ref, value in (("alpha/m", 0.9), ("alpha/pub:2.0.0", 0.8), ("beta/b", 0.95)):
            reg.add_evaluation(
                ref,
                dataset="default/lightcurves",
                dataset_version="1.0",
                dataset_digest="sha256:" + "0" * 64,
                split="test",
                metrics={"accuracy": value},
                record={},
            )
        # A classifier of alpha evaluated on alpha's dataset by `sciserve
        # evaluate`'s own code: its record has a report and plots to draw.
        reg.publish(
            make_softmax_package(work / "cls", name="cls", namespace="alpha", labels=CLASSES)
        )
        split = registered.open_split(reg, "alpha/ds:1.0.0", "test")
        with sciserve.load("alpha/cls", registry=reg) as classifier:
            EVAL["record_id"] = EVAL_PLOT["record_id"] = registered.evaluate_dataset(
                reg, classifier, split
            ).stored.record_id
        tokens = TokenStore(reg)

        def mint(scopes: dict[str, set[str]], **kwargs: Any) -> str:
            return "Bearer " + tokens.create("matrix", scopes, **kwargs)[1]

        # Minted two hours ago for one hour, by the clock expiry is measured with.
        past = registry_db.utcnow() - timedelta(hours=2)
        with mock.patch.object(registry_db, "utcnow", return_value=past):
            expired = mint({"alpha": set(SCOPES)}, expires_in=timedelta(hours=1))
        revoked_record, revoked = tokens.create("matrix", {"alpha": set(SCOPES)})
        tokens.revoke(revoked_record.token_id)
        REVOKED["token_id"] = revoked_record.token_id
        jobs = JobStore.of(reg)
        for namespace, where in (("alpha", JOB), ("beta", {}), ("zeta", ZETA_JOB)):
            job = jobs.submit(yaml.safe_dump(JOB_SPEC), namespace=namespace, submitter="matrix")
            where["job_id"] = job.id
        granted = {
            "other_namespace": {"beta": SCOPES},
            "default_namespace": {"default": SCOPES},
            "reader": {"alpha": frozenset({"read"})},
            "inferrer": {"alpha": frozenset({"infer"})},
            "publisher": {"alpha": frozenset({"publish"})},
            "namespace_admin": {"alpha": frozenset({"admin"})},
        }
        creds = {
            name: Credential(mint({ns: set(s) for ns, s in g.items()}), g)
            for name, g in granted.items()
        }
        creds["admin"] = Credential(mint({}, admin=True), {"*": frozenset({"admin"})})
    good = _jwt(
        key,
        ISSUER,
        scope="compute.read compute.create compute.modify",
        **{"wlcg.groups": ["/alpha"]},
    )
    groups = {"wlcg.groups": ["/alpha"], "scope": "compute.read compute.create"}
    rejected = {
        "none": None,
        "malformed": "Bearer ssv_not-a-token",
        "wrong_scheme": "Basic bWF0cml4OnNlY3JldA==",
        "unknown_token": f"Bearer ssv_{'Q' * 12}_{'A' * 43}",
        "expired_token": expired,
        "revoked_token": "Bearer " + revoked,
        "jwt_bad_signature": "Bearer " + _jwt(stranger, ISSUER, **groups),
        "jwt_unknown_issuer": "Bearer " + _jwt(key, ROGUE_ISSUER, **groups),
    }
    creds.update({name: Credential(header, None) for name, header in rejected.items()})
    creds["jwt"] = Credential("Bearer " + good, {"alpha": frozenset({"read", "infer", "publish"})})
    # Names that differ from served ones only by where the dot falls.
    for namespace, name in LEGACY:
        package = make_onnx_package(
            work / f"legacy-{name}",
            name=name,
            namespace=namespace,
            version="2.0.0",
            scale=LEGACY_SCALE,
        )
        insert_legacy_version(home, package)
    return creds, archive, dataset_archive


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("matrix")
    creds, archive, dataset_archive = _build(work / "home", work)
    server = start_server(work / "home", "--auth")
    try:
        relayed = start_server(
            work / "home", "--auth", "--grpc-frontends", "1", "--http-frontends", "1"
        )
    except BaseException:
        stop_server(server.proc)
        raise
    try:
        admin = creds["admin"].header
        assert admin is not None
        yield World(server, creds, archive, admin, relayed, dataset_archive)
    finally:
        stop_server(relayed.proc)
        stop_server(server.proc)


# -- REST --------------------------------------------------------------------------

_INFER_BODY = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
).encode()


@dataclass(frozen=True)
class Rest:
    """How to call one route, and what it answers when allowed."""

    target: Target
    ok: int = 200
    body: Callable[[World], bytes] | None = None
    params: dict[str, str] = field(default_factory=dict)
    #: A query string added to the path (``?metric=accuracy``).
    query: str = ""
    #: Run with the admin token before each call / after each call (restores state).
    before: tuple[str, str, bytes] | None = None
    after: tuple[str, str, bytes] | None = None
    #: Status a truly missing model gets (400 where the request is refused first).
    missing: int = 404
    #: For listings: the namespaces of the models or namespaces in the answer
    #: (as ``parse`` reads the body: JSON, or a dashboard page).
    seen: Callable[[Any], set[str]] | None = None
    parse: Callable[[bytes], Any] = json.loads
    #: For listings: the namespaces they can show.
    universe: tuple[str, ...] = SERVED_NAMESPACES
    #: Routes about something other than a model named in the path (jobs):
    #: the same request about one that does not exist, and about one in a
    #: namespace that does not exist.  By default the model is renamed.
    ghost: Callable[[Rest, bytes], Stand] | None = None
    elsewhere: Callable[[Rest, bytes], Stand] | None = None


@dataclass(frozen=True)
class Stand:
    """A request standing in for a cell's: its parameters and body, and the
    text naming the stand-in (``mark``) where the cell's answer names ``real``."""

    params: dict[str, str]
    body: bytes
    mark: str
    real: str


def _served_namespaces(names: list[str]) -> set[str]:
    return {n.split(".", 1)[0] if "." in n else "default" for n in names}


def _page_namespaces(page: bytes) -> set[str]:
    """The namespaces of the models a dashboard page lists (its rows name them)."""
    return set(re.findall(r'<tr class="model" data-namespace="([^"]+)"', page.decode()))


MODEL = Target("model")
INFER = Target("model", "infer")
ADMIN = Target("model", "admin")
PUBLISH = Target("model", "publish")
OIP = {"name": "alpha.m", "version": "1.0.0"}
SPARE = {"name": "alpha.pub"}
REG = {"namespace": "alpha", "name": "pub", "version": "2.0.0", "alias": "stable"}
#: The revoked token of the world (_build fills in its id): revoking it again is a no-op.
REVOKED = {"token_id": ""}
_POLICY = b'{"require": ["lightcurves:accuracy >= 0.5"]}'
_EVALUATION = json.dumps(
    {
        "version": "1.0.0",
        "dataset": "lightcurves",
        "dataset_version": "1.0",
        "dataset_digest": "sha256:" + "0" * 64,
        "metrics": {"accuracy": 0.75},
    }
).encode()
_RELOAD = ("POST", "/v2/repository/models/alpha.pub/load", b"")
JOBS = "/v2/sciserve/jobs"
#: The jobs of the world (_build fills in their ids): one of alpha, one of zeta.
JOB = {"job_id": ""}
ZETA_JOB = {"job_id": ""}
#: The record of alpha/cls that `evaluate` stored (_build fills in its id).
EVAL = {"namespace": "alpha", "name": "cls", "record_id": ""}
EVAL_PLOT = {**EVAL, "plot": "confusion.png"}
#: A job id nobody has.
NO_JOB = "j-0000000000000000"
JOB_SPEC = {
    "name": "matrix",
    "input": "lsst",
    "columns": ["f0", "f1", "f2", "f3"],
    "id": "obj",
    "models": [{"ref": "alpha/m"}],
}


def _job_body(ref: str) -> bytes:
    return json.dumps({"spec": {**JOB_SPEC, "models": [{"ref": ref}]}}).encode()


def _no_job(spec: Rest, body: bytes) -> Stand:
    return Stand({"job_id": NO_JOB}, body, NO_JOB, spec.params["job_id"])


def _zeta_job(spec: Rest, body: bytes) -> Stand:
    return Stand(ZETA_JOB, body, ZETA_JOB["job_id"], spec.params["job_id"])


def _ghost_model(spec: Rest, body: bytes) -> Stand:
    return Stand({}, _job_body(f"alpha/{GHOST}"), GHOST, "m")


def _zeta_model(spec: Rest, body: bytes) -> Stand:
    return Stand({}, _job_body("zeta/m"), "zeta", "alpha")


_JOB_ROUTE = {"params": JOB, "ghost": _no_job, "elsewhere": _zeta_job}
_UNYANK = ("POST", f"{REGISTRY}/models/alpha/pub/versions/2.0.0/unyank", b"")
#: The dataset of the world, as REG is its model.
DS = {"namespace": "alpha", "name": "ds", "version": "2.0.0", "alias": "stable"}
_DS_UNYANK = ("POST", f"{REGISTRY}/datasets/alpha/ds/versions/2.0.0/unyank", b"")


def _rest_table() -> dict[tuple[str, str], Rest]:
    """Every route of the HTTP application (HEAD goes with GET)."""
    model, version = "/v2/models/{name}", "/v2/models/{name}/versions/{version}"
    reg_model = REGISTRY + "/models/{namespace}/{name}"
    table: dict[tuple[str, str], Rest] = {
        ("POST", model + "/infer"): Rest(INFER, body=lambda w: _INFER_BODY, params=OIP),
        ("POST", version + "/infer"): Rest(INFER, body=lambda w: _INFER_BODY, params=OIP),
        ("GET", "/v2/health/live"): Rest(PUBLIC),
        ("GET", "/v2/health/ready"): Rest(PUBLIC),
        ("GET", "/v2"): Rest(PUBLIC),
        ("GET", "/v2/models/stats"): Rest(
            LISTING, seen=lambda d: _served_namespaces([m["name"] for m in d["model_stats"]])
        ),
        ("GET", "/v2/sciserve/monitoring"): Rest(
            LISTING, seen=lambda d: _served_namespaces([m["model"] for m in d["models"]])
        ),
        ("POST", "/v2/sciserve/monitoring/{name}/reference"): Rest(ADMIN, params=OIP),
        ("POST", "/v2/repository/index"): Rest(
            LISTING, body=lambda w: b"{}", seen=lambda d: _served_namespaces([m["name"] for m in d])
        ),
        ("POST", "/v2/repository/models/{name}/load"): Rest(ADMIN, params=SPARE),
        ("POST", "/v2/repository/models/{name}/unload"): Rest(ADMIN, params=SPARE, after=_RELOAD),
        ("GET", REGISTRY + "/namespaces"): Rest(
            LISTING,
            seen=lambda d: {n["name"] for n in d["namespaces"]},
            universe=REGISTRY_NAMESPACES,
        ),
        ("GET", REGISTRY + "/events"): Rest(Target("global")),
        ("POST", REGISTRY + "/verify"): Rest(Target("global")),
        ("GET", REGISTRY + "/tokens"): Rest(Target("global")),
        ("POST", REGISTRY + "/tokens"): Rest(
            Target("global"),
            ok=201,
            body=lambda w: b'{"subject": "m", "scopes": {"beta": ["read"]}}',
        ),
        ("POST", REGISTRY + "/tokens/{token_id}/revoke"): Rest(Target("global"), params=REVOKED),
        ("GET", REGISTRY + "/models"): Rest(
            LISTING,
            seen=lambda d: {m["namespace"] for m in d["models"]},
            universe=REGISTRY_NAMESPACES,
        ),
        # Publishing the very same archive again is the no-op answer 200.
        ("POST", REGISTRY + "/models"): Rest(
            Target("publish", "publish"), body=lambda w: w.archive
        ),
        ("GET", reg_model + "/versions"): Rest(MODEL, params=REG),
        ("POST", JOBS): Rest(
            INFER,
            ok=201,
            body=lambda w: _job_body("alpha/m"),
            ghost=_ghost_model,
            elsewhere=_zeta_model,
        ),
        ("GET", JOBS): Rest(
            LISTING,
            seen=lambda d: {j["namespace"] for j in d["jobs"]},
            universe=("alpha", "beta", "zeta"),
        ),
        ("GET", JOBS + "/{job_id}"): Rest(MODEL, **_JOB_ROUTE),
        ("GET", JOBS + "/{job_id}/logs"): Rest(MODEL, **_JOB_ROUTE),
        # Cancelling a cancelled job is a no-op; resuming needs one cancelled.
        ("POST", JOBS + "/{job_id}/cancel"): Rest(INFER, **_JOB_ROUTE),
        ("POST", JOBS + "/{job_id}/resume"): Rest(
            INFER, before=("POST", JOBS + "/{job_id}/cancel", b""), **_JOB_ROUTE
        ),
        # The dashboard: pages take the caller from the Authorization header
        # as the API does (or from the session cookie a login sets).
        ("GET", "/"): Rest(LISTING, parse=_page_namespaces, seen=set, universe=REGISTRY_NAMESPACES),
        ("GET", "/models/{namespace}/{name}"): Rest(
            MODEL, params={"namespace": "alpha", "name": "pub"}
        ),
        ("GET", "/jobs"): Rest(
            LISTING, parse=_page_namespaces, seen=set, universe=("alpha", "beta", "zeta")
        ),
        ("GET", "/jobs/{job_id}"): Rest(MODEL, **_JOB_ROUTE),
        ("GET", "/admin"): Rest(Target("global")),
        # Leaderboards: a row per model version the caller may see, with a link
        # to its report, which reads like the model's page.
        ("GET", "/benchmarks"): Rest(
            LISTING, parse=_page_namespaces, seen=set, universe=("alpha", "beta")
        ),
        ("GET", "/benchmarks/{namespace}/{name}/evaluations/{record_id}"): Rest(MODEL, params=EVAL),
        ("GET", "/streams"): Rest(Target("global")),
        ("GET", "/health"): Rest(LISTING, parse=_page_namespaces, seen=set),
        ("GET", "/v2/sciserve/health"): Rest(
            LISTING, seen=lambda d: {m["namespace"] for m in d["models"]}
        ),
        ("GET", "/ui/live/{name}"): Rest(MODEL, params={"name": "alpha.m"}),
        ("GET", "/ui/static/{file}"): Rest(PUBLIC, params={"file": "dashboard.js"}),
        ("GET", "/login"): Rest(PUBLIC),
        # Without the form's CSRF token both are refused, whoever asks.
        ("POST", "/login"): Rest(PUBLIC, ok=403),
        ("POST", "/logout"): Rest(PUBLIC, ok=403),
        ("PUT", reg_model + "/aliases/{alias}"): Rest(
            PUBLISH, body=lambda w: b'{"version": "1.0.0"}', params=REG
        ),
        ("DELETE", reg_model + "/aliases/{alias}"): Rest(
            PUBLISH,
            ok=204,
            params={**REG, "alias": "temp"},
            before=("PUT", f"{REGISTRY}/models/alpha/pub/aliases/temp", b'{"version": "1.0.0"}'),
        ),
        # Promotion policies and evaluation records: reading needs a scope in
        # the namespace, writing its admin (a record is evidence for a gate).
        ("GET", reg_model + "/policies"): Rest(MODEL, params=REG),
        ("PUT", reg_model + "/policies/{policy}"): Rest(
            ADMIN, body=lambda w: _POLICY, params={**REG, "policy": "guarded"}
        ),
        ("DELETE", reg_model + "/policies/{policy}"): Rest(
            ADMIN,
            ok=204,
            params={**REG, "policy": "guarded"},
            before=("PUT", f"{REGISTRY}/models/alpha/pub/policies/guarded", _POLICY),
        ),
        ("GET", reg_model + "/evaluations"): Rest(MODEL, params=REG),
        ("GET", REGISTRY + "/leaderboards/{namespace}/{name}"): Rest(
            LISTING,
            params={"namespace": "default", "name": "lightcurves"},
            query="?metric=accuracy",
            seen=lambda d: {e["model"].split("/", 1)[0] for e in d["entries"]},
        ),
        ("POST", reg_model + "/evaluations"): Rest(
            ADMIN, ok=201, body=lambda w: _EVALUATION, params=REG
        ),
        # A record, its report and plots: read access like the model's.
        ("GET", reg_model + "/evaluations/{record_id}"): Rest(MODEL, params=EVAL),
        ("GET", reg_model + "/evaluations/{record_id}/report"): Rest(MODEL, params=EVAL),
        ("GET", reg_model + "/evaluations/{record_id}/plots/{plot}"): Rest(MODEL, params=EVAL_PLOT),
    }
    for ref in (reg_model, reg_model + "/versions/{version}", reg_model + "/aliases/{alias}"):
        # Only an exact version can be yanked: other references are refused first.
        exact = ref.endswith("{version}")
        table |= {
            ("GET", ref): Rest(MODEL, params=REG),
            ("GET", ref + "/card"): Rest(MODEL, params=REG),
            ("GET", ref + "/card.jsonld"): Rest(MODEL, params=REG),
            ("GET", ref + "/archive"): Rest(MODEL, params=REG),
            ("POST", ref + "/verify"): Rest(ADMIN, params=REG),
            ("POST", ref + "/yank"): Rest(
                PUBLISH,
                ok=200 if exact else 400,
                missing=404 if exact else 400,
                body=lambda w: b'{"reason": "matrix"}',
                params=REG,
                after=_UNYANK,
            ),
            ("POST", ref + "/unyank"): Rest(PUBLISH, params=REG),
        }
    # Datasets: the registry's routes for models, under /datasets, by the same rule.
    reg_ds = REGISTRY + "/datasets/{namespace}/{name}"
    table |= {
        ("GET", REGISTRY + "/datasets"): Rest(
            LISTING, seen=lambda d: {x["namespace"] for x in d["datasets"]}, universe=("alpha",)
        ),
        # Publishing the very same archive again is the no-op answer 200.
        ("POST", REGISTRY + "/datasets"): Rest(
            Target("publish", "publish"), body=lambda w: w.dataset_archive
        ),
        ("GET", reg_ds + "/versions"): Rest(MODEL, params=DS),
        ("PUT", reg_ds + "/aliases/{alias}"): Rest(
            PUBLISH, body=lambda w: b'{"version": "1.0.0"}', params=DS
        ),
        ("DELETE", reg_ds + "/aliases/{alias}"): Rest(
            PUBLISH,
            ok=204,
            params={**DS, "alias": "temp"},
            before=("PUT", f"{REGISTRY}/datasets/alpha/ds/aliases/temp", b'{"version": "1.0.0"}'),
        ),
    }
    for ref in (reg_ds, reg_ds + "/versions/{version}", reg_ds + "/aliases/{alias}"):
        exact = ref.endswith("{version}")
        table |= {
            ("GET", ref): Rest(MODEL, params=DS),
            ("GET", ref + "/croissant"): Rest(MODEL, params=DS),
            ("GET", ref + "/archive"): Rest(MODEL, params=DS),
            ("POST", ref + "/verify"): Rest(ADMIN, params=DS),
            ("POST", ref + "/yank"): Rest(
                PUBLISH,
                ok=200 if exact else 400,
                missing=404 if exact else 400,
                body=lambda w: b'{"reason": "matrix"}',
                params=DS,
                after=_DS_UNYANK,
            ),
            ("POST", ref + "/unyank"): Rest(PUBLISH, params=DS),
        }
    for path in (model, version):
        table |= {
            ("GET", path): Rest(MODEL, params=OIP),
            ("GET", path + "/ready"): Rest(MODEL, params=OIP),
            ("GET", path + "/config"): Rest(MODEL, params=OIP),
            ("GET", path + "/stats"): Rest(MODEL, params=OIP),
        }
    return table


REST_TABLE = _rest_table()


def _app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    with Registry(Settings.load(tmp_path / "home", environ={})) as reg:
        app = create_app(InferenceService(reg))
        found = set()
        for route in app.routes:
            assert isinstance(route, Route)
            found |= {(method, route.path) for method in route.methods or ()}
    return found


def test_every_rest_route_has_an_expectation(tmp_path: Path) -> None:
    routes = _app_routes(tmp_path)
    # Starlette answers HEAD wherever it answers GET; those cells reuse the GET row.
    assert {(m, p) for m, p in routes if m == "HEAD"} == {
        ("HEAD", p) for m, p in routes if m == "GET"
    }
    assert {r for r in routes if r[0] != "HEAD"} == set(REST_TABLE)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: httpx.Headers


def _fill(path: str, params: dict[str, str]) -> str:
    for key, value in params.items():
        path = path.replace("{" + key + "}", value)
    assert "{" not in path, path
    return path


def _call(client: httpx.Client, method: str, path: str, header: str | None, body: bytes) -> Answer:
    headers = {} if header is None else {"Authorization": header}
    if method in ("POST", "PUT") and body:
        headers["Content-Type"] = "application/json" if body[:1] == b"{" else "application/gzip"
    response = client.request(method, path, headers=headers, content=body or None)
    return Answer(response.status_code, response.content, response.headers)


def _ghost(spec: Rest, body: bytes) -> Stand:
    """The same request naming a model that does not exist."""
    params = spec.params
    name = params["name"]
    if "namespace" in params:
        return Stand({**params, "name": GHOST}, body, GHOST, name)
    namespace, real = name.split(".", 1)
    return Stand({**params, "name": f"{namespace}.{GHOST}"}, body, GHOST, real)


def _elsewhere(spec: Rest, body: bytes) -> Stand:
    """The same request in a namespace that does not exist."""
    params = spec.params
    if "namespace" in params:
        return Stand({**params, "namespace": "zeta"}, body, "zeta", "alpha")
    renamed = params["name"].replace("alpha.", "zeta.", 1)
    return Stand({**params, "name": renamed}, body, "zeta", "alpha")


def _as(answer: bytes, stand: Stand) -> bytes:
    """An answer about a stand-in, as it would read about the real thing."""
    return answer.replace(stand.mark.encode(), stand.real.encode())


def _rest_cell(
    client: httpx.Client, world: World, method: str, path: str, spec: Rest, name: str
) -> list[str]:
    """Run one cell; return what went wrong (nothing, when the cell holds)."""
    cred = world.creds[name]
    want = expected(spec.target, cred)
    body = spec.body(world) if spec.body is not None and method != "HEAD" else b""
    url = _fill(path, spec.params) + spec.query
    if spec.before is not None:
        m, p, b = spec.before
        assert _call(client, m, _fill(p, spec.params), world.admin, b).status < 300
    try:
        got = _call(client, method, url, cred.header, body)
    finally:
        if spec.after is not None:
            m, p, b = spec.after
            assert _call(client, m, p, world.admin, b).status < 300
    status = {
        Outcome.OK: spec.ok,
        Outcome.UNAUTHENTICATED: 401,
        Outcome.FORBIDDEN: 403,
        Outcome.NOT_FOUND: 404,
    }[want]
    where = f"{method} {url} as {name}: expected {status} ({want.name})"
    if got.status != status:
        return [f"{where}, got {got.status} {got.body[:200]!r}"]
    problems = []
    if want is Outcome.UNAUTHENTICATED and not got.headers.get("www-authenticate", "").startswith(
        "Bearer"
    ):
        problems.append(f"{where}: no WWW-Authenticate: Bearer")
    if method == "HEAD":
        return problems
    if want is Outcome.NOT_FOUND and spec.target.kind == "model":
        # Invisible must read exactly like missing: for an all-seeing caller
        # asking for a model that does not exist, and for this caller asking
        # in a namespace that does not exist.
        ghost = (spec.ghost or _ghost)(spec, body)
        missing = _call(client, method, _fill(path, ghost.params), world.admin, ghost.body)
        if missing.status != spec.missing:
            problems.append(f"{where}: a missing model gets {missing.status}")
        elif missing.status == 404 and _as(missing.body, ghost) != got.body:
            problems.append(f"{where}: {got.body!r} differs from missing {missing.body!r}")
        other = (spec.elsewhere or _elsewhere)(spec, body)
        nowhere = _call(client, method, _fill(path, other.params), cred.header, other.body)
        if (nowhere.status, _as(nowhere.body, other)) != (got.status, got.body):
            problems.append(f"{where}: {got.body!r} differs from nowhere {nowhere.body!r}")
    if want is Outcome.OK and spec.seen is not None:
        seen = spec.seen(spec.parse(got.body))
        visible = {ns for ns in spec.universe if cred.sees(ns)}
        if seen != visible:
            problems.append(f"{where}: listed namespaces {seen}, may see {visible}")
    if want is Outcome.OK and method == "POST" and path.endswith("/infer"):
        outputs = json.loads(got.body)["outputs"]
        expected_y = np.array([[1, 2, 3, 4]], np.float32) @ np.arange(12, dtype=np.float32).reshape(
            4, 3
        ) + np.float32(1)
        if outputs[0]["data"] != expected_y.ravel().tolist():
            problems.append(f"{where}: wrong inference answer {outputs}")
    return problems


def _coverage(outcomes: dict[tuple[str, str], set[Outcome]], targets: dict[Any, Target]) -> None:
    """Every protected endpoint showed both faces: refused and allowed."""
    for key, seen in outcomes.items():
        target = targets[key]
        if target.kind in ("public", "unimplemented"):
            assert len(seen) == 1, (key, seen)
            continue
        assert {Outcome.OK, Outcome.UNAUTHENTICATED} <= seen, (key, seen)
        if target.kind in ("model", "publish"):
            assert Outcome.NOT_FOUND in seen, (key, seen)
        if target.kind == "global" or (target.kind == "model" and target.scope != "read"):
            assert Outcome.FORBIDDEN in seen, (key, seen)


@pytest.mark.parametrize("mode", ["in-process", "front-end"])
def test_rest_matrix(world: World, mode: str) -> None:
    problems: list[str] = []
    cells = 0
    outcomes: dict[tuple[str, str], set[Outcome]] = {}
    targets: dict[Any, Target] = {}
    with httpx.Client(base_url=f"http://{world.http(mode)}", timeout=30) as client:
        for (method, path), spec in REST_TABLE.items():
            for verb in (method, "HEAD") if method == "GET" else (method,):
                targets[(verb, path)] = spec.target
                for name, cred in world.creds.items():
                    problems += _rest_cell(client, world, verb, path, spec, name)
                    outcomes.setdefault((verb, path), set()).add(expected(spec.target, cred))
                    cells += 1
    assert problems == [], "\n".join(problems)
    assert cells == (len(REST_TABLE) + sum(m == "GET" for m, _ in REST_TABLE)) * len(world.creds)
    _coverage(outcomes, targets)


def test_a_listing_of_an_invisible_namespace_is_a_missing_namespace(world: World) -> None:
    url = f"http://{world.server.http}{REGISTRY}/models"
    other = world.creds["other_namespace"].header
    assert other is not None
    hidden = httpx.get(url, params={"namespace": "alpha"}, headers={"Authorization": other})
    absent = httpx.get(url, params={"namespace": "zeta"}, headers={"Authorization": other})
    assert hidden.status_code == absent.status_code == 404
    assert hidden.content == absent.content.replace(b"zeta", b"alpha")
    shown = httpx.get(url, params={"namespace": "alpha"}, headers={"Authorization": world.admin})
    assert {m["name"] for m in shown.json()["models"]} == {"cls", "m", "pub"}


# -- gRPC ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    """How to call one method, and what it answers when allowed."""

    target: Target
    #: The request, given the served model name to put in it.
    request: Callable[[str], Any] = lambda name: None
    model: str = "alpha.m"
    ok: Callable[[Any], bool] = lambda response: True
    after: str | None = None  # "reload": load alpha.pub again with the admin token


def _infer_request(name: str) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=name)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return request


def _infer_ok(response: Any) -> bool:
    if isinstance(response, list):  # a stream: exactly one answer, without error
        if len(response) != 1 or response[0].error_message:
            return False
        response = response[0].infer_response
    y = np.frombuffer(response.raw_output_contents[0], np.float32)
    return bool(y.tolist() == [19.0, 23.0, 27.0])


def _grpc_namespaces(response: Any) -> set[str]:
    return _served_namespaces([m.name for m in response.models])


GRPC_TABLE: dict[str, Rpc] = {
    f"{INFERENCE}/ServerLive": Rpc(PUBLIC, ok=lambda r: r.live),
    f"{INFERENCE}/ServerReady": Rpc(PUBLIC, ok=lambda r: r.ready),
    f"{INFERENCE}/ServerMetadata": Rpc(PUBLIC, ok=lambda r: r.name == "sciserve"),
    f"{INFERENCE}/ModelReady": Rpc(
        MODEL, lambda n: service_pb2.ModelReadyRequest(name=n), ok=lambda r: r.ready
    ),
    f"{INFERENCE}/ModelMetadata": Rpc(
        MODEL, lambda n: service_pb2.ModelMetadataRequest(name=n), ok=lambda r: r.name == "alpha.m"
    ),
    f"{INFERENCE}/ModelConfig": Rpc(
        MODEL,
        lambda n: service_pb2.ModelConfigRequest(name=n),
        ok=lambda r: r.config.name == "alpha.m",
    ),
    f"{INFERENCE}/ModelStatistics": Rpc(
        MODEL,
        lambda n: service_pb2.ModelStatisticsRequest(name=n),
        ok=lambda r: {s.name for s in r.model_stats} == {"alpha.m"},
    ),
    f"{INFERENCE}/ModelInfer": Rpc(INFER, _infer_request, ok=_infer_ok),
    f"{INFERENCE}/ModelStreamInfer": Rpc(INFER, _infer_request, ok=_infer_ok),
    f"{INFERENCE}/RepositoryIndex": Rpc(LISTING, lambda n: service_pb2.RepositoryIndexRequest()),
    f"{INFERENCE}/RepositoryModelLoad": Rpc(
        ADMIN, lambda n: service_pb2.RepositoryModelLoadRequest(model_name=n), model="alpha.pub"
    ),
    f"{INFERENCE}/RepositoryModelUnload": Rpc(
        ADMIN,
        lambda n: service_pb2.RepositoryModelUnloadRequest(model_name=n),
        model="alpha.pub",
        after="reload",
    ),
    **{
        f"{INFERENCE}/{name}": Rpc(UNIMPLEMENTED)
        for name in (
            "SystemSharedMemoryStatus",
            "SystemSharedMemoryRegister",
            "SystemSharedMemoryUnregister",
            "CudaSharedMemoryStatus",
            "CudaSharedMemoryRegister",
            "CudaSharedMemoryUnregister",
            "TraceSetting",
            "LogSettings",
        )
    },
    # Health is for probes and load balancers: public, like REST's /v2/health.
    f"{HEALTH}/Check": Rpc(
        PUBLIC,
        lambda n: health_pb2.HealthCheckRequest(service=""),
        ok=lambda r: r.status == health_pb2.HealthCheckResponse.SERVING,
    ),
    f"{HEALTH}/Watch": Rpc(
        PUBLIC,
        lambda n: health_pb2.HealthCheckRequest(service=""),
        ok=lambda r: r[0].status == health_pb2.HealthCheckResponse.SERVING,
    ),
}

SERVICES: tuple[ServiceDescriptor, ...] = (
    service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
)


def _methods() -> dict[str, MethodDescriptor]:
    return {f"{s.full_name}/{m.name}": m for s in SERVICES for m in s.methods}


def test_every_grpc_method_has_an_expectation() -> None:
    assert set(_methods()) == set(GRPC_TABLE)


@dataclass(frozen=True)
class Reply:
    code: grpc.StatusCode
    details: str
    response: Any = None


def _rpc(
    channel: grpc.Channel, path: str, method: MethodDescriptor, request: Any, header: str | None
) -> Reply:
    inp = message_factory.GetMessageClass(method.input_type)
    out = message_factory.GetMessageClass(method.output_type)
    request = request if request is not None else inp()
    metadata = () if header is None else (("authorization", header),)
    kwargs: dict[str, Any] = {
        "request_serializer": inp.SerializeToString,
        "response_deserializer": out.FromString,
    }
    try:
        if method.client_streaming:
            stream = channel.stream_stream("/" + path, **kwargs)
            return Reply(grpc.StatusCode.OK, "", list(stream(iter([request]), metadata=metadata)))
        if method.server_streaming:  # Watch: the first status is the answer
            call = channel.unary_stream("/" + path, **kwargs)(request, metadata=metadata)
            first = next(call)
            call.cancel()
            return Reply(grpc.StatusCode.OK, "", [first])
        unary = channel.unary_unary("/" + path, **kwargs)
        return Reply(grpc.StatusCode.OK, "", unary(request, metadata=metadata, timeout=30))
    except grpc.RpcError as exc:
        return Reply(exc.code(), exc.details() or "")


def _stream_error(reply: Reply) -> str | None:
    """The ``error_message`` a stream answered with, if any."""
    if reply.code is grpc.StatusCode.OK and isinstance(reply.response, list):
        errors = [r.error_message for r in reply.response if getattr(r, "error_message", "")]
        return errors[0] if errors else None
    return None


def _grpc_cell(channel: grpc.Channel, world: World, path: str, spec: Rpc, name: str) -> list[str]:
    cred = world.creds[name]
    method = _methods()[path]
    want = expected(spec.target, cred)
    try:
        got = _rpc(channel, path, method, spec.request(spec.model), cred.header)
    finally:
        if spec.after == "reload":
            load = f"{INFERENCE}/RepositoryModelLoad"
            request = service_pb2.RepositoryModelLoadRequest(model_name="alpha.pub")
            reply = _rpc(channel, load, _methods()[load], request, world.admin)
            assert reply.code is grpc.StatusCode.OK
    where = f"{path} as {name}: expected {want.name}"
    stream_error = _stream_error(got)
    if method.client_streaming and want in (Outcome.NOT_FOUND, Outcome.FORBIDDEN):
        # A stream answers each request: the error is in the answer, the call succeeds.
        if stream_error is None:
            return [f"{where}, got {got.code} {got.response}"]
        code = (
            grpc.StatusCode.NOT_FOUND
            if want is Outcome.NOT_FOUND
            else grpc.StatusCode.PERMISSION_DENIED
        )
        details = stream_error
    else:
        code, details = got.code, got.details
    wanted_code = {
        Outcome.OK: grpc.StatusCode.OK,
        Outcome.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
        Outcome.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
        Outcome.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
        Outcome.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    }[want]
    if code is not wanted_code:
        return [f"{where}, got {code} {details!r}"]
    if want is Outcome.OK:
        if stream_error is not None or not spec.ok(got.response):
            return [f"{where}: unexpected answer {got.response} {stream_error!r}"]
        if spec.target is LISTING:
            visible = {ns for ns in SERVED_NAMESPACES if cred.sees(ns)}
            if _grpc_namespaces(got.response) != visible:
                return [f"{where}: listed {_grpc_namespaces(got.response)}, may see {visible}"]
    if want is Outcome.FORBIDDEN and "may not" not in details:
        return [f"{where}: {details!r}"]
    if want is Outcome.NOT_FOUND:
        ghost = f"alpha.{GHOST}"
        missing = _rpc(channel, path, method, spec.request(ghost), world.admin)
        missing_details = _stream_error(missing) or missing.details
        real = spec.model.split(".", 1)[1]
        if missing_details.replace(GHOST, real) != details:
            return [f"{where}: {details!r} differs from missing {missing_details!r}"]
        nowhere = _rpc(channel, path, method, spec.request("zeta." + real), cred.header)
        nowhere_details = _stream_error(nowhere) or nowhere.details
        if nowhere_details.replace("zeta", "alpha") != details:
            return [f"{where}: {details!r} differs from nowhere {nowhere_details!r}"]
    return []


GRPC_MODES = pytest.mark.parametrize("mode", ["in-process", "front-end"])


@GRPC_MODES
def test_grpc_matrix(world: World, mode: str) -> None:
    problems: list[str] = []
    outcomes: dict[tuple[str, str], set[Outcome]] = {}
    targets: dict[Any, Target] = {}
    with grpc.insecure_channel(world.grpc(mode)) as channel:
        for path, spec in GRPC_TABLE.items():
            targets[(path, "")] = spec.target
            for name, cred in world.creds.items():
                problems += _grpc_cell(channel, world, path, spec, name)
                outcomes.setdefault((path, ""), set()).add(expected(spec.target, cred))
    assert problems == [], "\n".join(problems)
    assert len(outcomes) == len(_methods())
    _coverage(outcomes, targets)


@GRPC_MODES
def test_grpc_health_of_a_model_answers_only_those_who_may_see_it(world: World, mode: str) -> None:
    """Health is public for the server, but a model's health would reveal that it exists."""
    serving = health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(world.grpc(mode)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name, cred in world.creds.items():
            metadata = (("authorization", cred.header),) if cred.header is not None else ()
            codes = {}
            for service in (OIP["name"], GHOST):
                request = health_pb2.HealthCheckRequest(service=service)
                try:
                    codes[service] = health.Check(request, metadata=metadata, timeout=10).status
                except grpc.RpcError as exc:
                    codes[service] = exc.code()
            assert codes[GHOST] == grpc.StatusCode.NOT_FOUND, name
            sees = cred.grants is not None and cred.sees("alpha")
            assert codes[OIP["name"]] == (serving if sees else grpc.StatusCode.NOT_FOUND), name


# -- one served name, one model --------------------------------------------------------


def _grpc_config_digest(address: str, served: str, header: str | None) -> str | grpc.StatusCode:
    """The digest of the model a gRPC ModelConfig of ``served`` describes, or the status code."""
    metadata = () if header is None else (("authorization", header),)
    with grpc.insecure_channel(address) as channel:
        method = channel.unary_unary(
            f"/{INFERENCE}/ModelConfig",
            request_serializer=service_pb2.ModelConfigRequest.SerializeToString,
            response_deserializer=service_pb2.ModelConfigResponse.FromString,
        )
        try:
            reply = method(service_pb2.ModelConfigRequest(name=served), metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code()
    return str(reply.config.parameters["sciserve_digest"].string_value)


def _grpc_infer_scale(address: str, served: str, header: str | None) -> float | grpc.StatusCode:
    """Which model's weights (their scale) answered a gRPC inference, or the status code."""
    metadata = () if header is None else (("authorization", header),)
    x = np.ones((1, 4), np.float32)
    with grpc.insecure_channel(address) as channel:
        method = channel.unary_unary(
            f"/{INFERENCE}/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        try:
            reply = method(_infer_request(served), metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            return exc.code()
    y = np.frombuffer(reply.raw_output_contents[0], np.float32)
    for scale in (1.0, LEGACY_SCALE):
        if np.allclose(y, expected_linear(x, scale=scale).ravel()):
            return scale
    raise AssertionError(f"{served}: an answer no model gives: {y}")


def test_a_served_name_means_one_model_whoever_asks_and_however(world: World) -> None:
    """``alpha.m`` is ``alpha/m`` and ``beta.b`` is ``beta/b``, never the ``default`` models
    whose names differ only by where the dot falls: for every credential, over REST, gRPC
    (in the serving process and from a front end) and the registry API, across alias polls."""
    registry = f"http://{world.server.http}{REGISTRY}/models"
    admin = {"Authorization": world.admin}
    digests = {
        (ns, name): httpx.get(f"{registry}/{ns}/{name}", headers=admin).json()["digest"]
        for ns, name in (("alpha", "m"), ("beta", "b"), *LEGACY)
    }
    with httpx.Client(base_url=f"http://{world.server.http}", timeout=30) as client:
        index = client.post("/v2/repository/index", headers=admin, content=b"{}").json()
        assert sorted(r["name"] for r in index if r["name"] in ("alpha.m", "beta.b")) == [
            "alpha.m",
            "beta.b",
        ]
        deadline = time.monotonic() + 1.5  # several alias polls (0.3 s)
        rounds = 0
        while rounds < 2 or time.monotonic() < deadline:
            rounds += 1
            for who, cred in world.creds.items():
                headers = {} if cred.header is None else {"Authorization": cred.header}
                for (namespace, name), served in (
                    (("alpha", "m"), "alpha.m"),
                    (("beta", "b"), "beta.b"),
                ):
                    where = f"{served} as {who}"
                    allowed = cred.grants is not None and cred.sees(namespace)
                    config = client.get(f"/v2/models/{served}/config", headers=headers)
                    if allowed:
                        assert config.status_code == 200, where
                        assert config.json()["sciserve"]["ref"] == f"{namespace}/{name}:1.0.0"
                    else:
                        assert config.status_code in (401, 404), where
                    for mode in ("in-process", "front-end"):
                        got = _grpc_config_digest(world.grpc(mode), served, cred.header)
                        want: str | grpc.StatusCode = digests[(namespace, name)]
                        if not allowed:
                            want = (
                                grpc.StatusCode.UNAUTHENTICATED
                                if cred.grants is None
                                else grpc.StatusCode.NOT_FOUND
                            )
                        assert got == want, f"{where} over gRPC ({mode})"
                        if allowed and cred.may("infer", namespace):
                            scale = _grpc_infer_scale(world.grpc(mode), served, cred.header)
                            assert scale == 1.0, f"{where} over gRPC ({mode})"
                    # The registry API names (namespace, name): each model is its own
                    # namespace's, whatever its served name looks like.
                    if cred.grants is None:
                        continue
                    for ns, reg_name in ((namespace, name), ("default", served)):
                        shown = client.get(f"{REGISTRY}/models/{ns}/{reg_name}", headers=headers)
                        if cred.sees(ns):
                            assert shown.status_code == 200, f"{ns}/{reg_name} as {who}"
                            assert shown.json()["digest"] == digests[(ns, reg_name)]
                        else:
                            assert shown.status_code == 404, f"{ns}/{reg_name} as {who}"
