"""The dashboard's routes: HTML pages over the service the REST API serves.

::

    GET  /                           the catalogue; ?q=&namespace=&runtime=&license=&tag=&alias=
                                     and &page=N (fifty models a page)
    GET  /models/{namespace}/{name}  a model's page; ?version=V for another version
    GET  /jobs                       batch jobs, newest first (?state=S[,S]), and schedules
    GET  /jobs/{job_id}              one job: progress, failure, log, first dead letters
    GET  /benchmarks                 leaderboards of the evaluations in the registry, per dataset;
                                     ?metric=M ranks by M where the records have it
    GET  /benchmarks/{namespace}/{name}/evaluations/{record_id}
                                     an evaluation's self-contained HTML report
    GET  /admin                      usage per namespace, caller and model; the audit trail
    GET  /streams                    alert-stream workers from their status files (admins)
    GET  /health                     what is wrong and what to do (page)
    GET  /v2/sciserve/health         the same as JSON
    GET  /ui/live/{name}             live numbers and drift judgement of a served model, JSON
                                     (the page's charts and drift alerts poll it)
    GET  /ui/static/{file}           the dashboard's own script and style sheet
    GET  /login, POST /login, POST /logout: sessions (:mod:`.session`)

Every page asks the same objects the REST API asks (the registry, the
model manager, the access policy, the statistics), with the caller the
REST API would see: the ``Authorization`` header, else the session cookie.
A model or namespace the caller may not see is exactly a missing one.
Templates are Jinja2 with autoescaping on; pages load no script or style
but the dashboard's own (a Content-Security-Policy says so), so they work
without internet access.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ...access.identity import ANY_NAMESPACE, Identity
from ...access.policy import authorize
from ...access.usage import UsageStore
from ...errors import InvalidInput, NotFound, PermissionDenied, SciserveError, Unauthenticated
from ...evaluation import views
from ...jobs.records import JobLogLine, JobRecord, JobStore, parse_states
from ...jobs.schedules import Run, Schedule, ScheduleStore
from ...package.card import bibtex, identifier_iri, snippets
from ...package.manifest import NAME_RE, NAMESPACE_RE
from ...package.reference import Reference, served_name
from ...registry.registry import ModelPage, VersionInfo
from ...registry.search import ModelQuery
from ...serving.service import InferenceService
from ...streams.metrics import WorkerStatus, read_statuses
from .._messages import client_message
from . import session
from .dead_letters import read_dead_letters
from .health import check_health

__all__ = ["HEALTH_PATH", "PAGE_SIZE", "Dashboard"]

log = logging.getLogger("sciserve.protocol.dashboard")

HEALTH_PATH: Final = "/v2/sciserve/health"
_STATIC: Final = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
#: Headers of every dashboard answer: only its own scripts and styles run,
#: no other site may frame it, and no page is cached or leaks its address.
_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
#: The catalogue's filters (query parameters), and their longest value.
_FILTERS: Final = ("q", "namespace", "runtime", "license", "tag", "alias")
_MAX_FILTER: Final = 200
#: Models on one page of the catalogue, and the highest page number asked
#: for (a million models is far beyond any registry this serves).
PAGE_SIZE: Final = 50
_MAX_PAGE: Final = 1_000_000 // PAGE_SIZE
#: Most jobs a listing shows, and log lines a job page shows.
_MAX_JOBS: Final = 200
_MAX_LOG: Final = 1000
#: Most evaluation records the benchmarks page looks through for its datasets.
_MAX_RECORDS: Final = 10_000
#: The metric a leaderboard ranks by unless asked, the first a dataset's records have.
_DEFAULT_METRICS: Final = ("weighted_log_loss", "accuracy", "rmse", "mae")
#: Most schedules the jobs page shows, and runs of each.
_MAX_SCHEDULES: Final = 100
_SCHEDULE_RUNS: Final = 5
#: Most usage rows and audit events the admin page shows.
_MAX_USAGE: Final = 500
_MAX_EVENTS: Final = 100
#: The largest login form accepted.
_MAX_FORM: Final = 16 * 1024
#: What a token may look like to be kept in a cookie (API tokens and JWTs do).
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9._~+/=-]{1,8192}")

Endpoint = Callable[[Request], Awaitable[Response]]
Guard = Callable[[Endpoint], Endpoint]


class Dashboard:
    """The dashboard over one :class:`InferenceService`.

    ``json_guard`` wraps the JSON routes exactly as the REST API wraps its
    own (errors as JSON, denials audited); ``status_of`` maps error classes
    to HTTP statuses, the one table the REST API keeps.
    """

    def __init__(
        self,
        service: InferenceService,
        *,
        json_guard: Guard,
        status_of: Callable[[type[BaseException]], int],
        json_response: Callable[[Any], Response],
    ) -> None:
        self.service = service
        self.registry = service.registry
        self._json_guard = json_guard
        self._status_of = status_of
        self._json = json_response
        self.env = Environment(
            loader=PackageLoader(__package__ or "sciserve.protocol.dashboard", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = _published
        root = resources.files(__package__ or "sciserve.protocol.dashboard") / "static"
        self._static = {name: (root / name).read_bytes() for name in _STATIC}

    def routes(self) -> list[BaseRoute]:
        get, post = ["GET"], ["POST"]
        pages: list[tuple[str, Endpoint, list[str]]] = [
            ("/", self.catalogue, get),
            ("/models/{namespace}/{name}", self.model, get),
            ("/jobs", self.jobs, get),
            ("/jobs/{job_id}", self.job, get),
            ("/benchmarks", self.benchmarks, get),
            ("/benchmarks/{namespace}/{name}/evaluations/{record_id}", self.report, get),
            ("/admin", self.admin, get),
            ("/streams", self.streams, get),
            ("/health", self.health_page, get),
            ("/login", self.login_page, get),
            ("/login", self.login, post),
            ("/logout", self.logout, post),
        ]
        apis: list[tuple[str, Endpoint, list[str]]] = [
            (HEALTH_PATH, self.health_json, get),
            ("/ui/live/{name}", self.live, get),
            ("/ui/static/{file}", self.static, get),
        ]
        routes: list[BaseRoute] = [Route(p, self._page(fn), methods=m) for p, fn, m in pages]
        routes += [Route(p, self._json_guard(fn), methods=m) for p, fn, m in apis]
        return routes

    # -- callers ---------------------------------------------------------

    def _authorization(self, request: Request) -> str | None:
        header = request.headers.get("authorization")
        if header is not None:
            return header
        token = session.session_token(request)
        return None if token is None else f"Bearer {token}"

    async def _identity(self, request: Request) -> Identity:
        return await self.service.identify(self._authorization(request))

    def _logged_in(self, request: Request) -> bool:
        """Whether the caller is a browser with a session (not an API client)."""
        return "authorization" not in request.headers and session.session_token(request) is not None

    # -- rendering -------------------------------------------------------

    def _render(
        self,
        request: Request,
        template: str,
        status: int = 200,
        identity: Identity | None = None,
        **context: Any,
    ) -> Response:
        token = session.session_token(request) if self._logged_in(request) else None
        html = self.env.get_template(template).render(
            identity=identity,
            auth=self.service.access is not None,
            logout_csrf=None if token is None else session.csrf_token(token),
            **context,
        )
        return Response(html, status, dict(_HEADERS), media_type="text/html")

    def _error_page(self, request: Request, status: int, title: str, message: str) -> Response:
        # Error pages name nobody: an invisible model's page must read exactly
        # like a missing one's, whoever asks.
        response = self._render(
            request, "error.html", status, None, title=title, message=message, login=status == 401
        )
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="sciserve"'
            if "authorization" not in request.headers and session.session_token(request):
                session.clear_session(request, response)  # expired or revoked: start again
        return response

    def _page(self, endpoint: Endpoint) -> Endpoint:
        """Wrap a page so every error is an HTML page with the REST API's status."""

        @functools.wraps(endpoint)
        async def page(request: Request) -> Response:
            try:
                return await endpoint(request)
            except SciserveError as exc:
                status = self._status_of(type(exc))
                if isinstance(exc, Unauthenticated | PermissionDenied):
                    reason = "unauthenticated" if status == 401 else "forbidden"
                    await self._denied(request, reason)
                if status == 401:
                    return self._error_page(
                        request, 401, "Log in", "Log in with an API token to see this page."
                    )
                if status >= 500:
                    log.error("%s: %s", type(exc).__name__, exc, exc_info=exc)
                    return self._error_page(request, status, "Server error", _INTERNAL)
                return self._error_page(
                    request, status, _TITLES.get(status, "Error"), client_message(str(exc), 500)
                )
            except Exception:
                log.exception("unexpected error in %s %s", request.method, request.url.path)
                return self._error_page(request, 500, "Server error", _INTERNAL)

        return page

    async def _denied(self, request: Request, reason: str) -> None:
        route = request.scope.get("route")
        template = getattr(route, "path", request.url.path)
        await self.service.record_denial(
            f"{request.method} {template}", reason, self._authorization(request)
        )

    # -- the catalogue ---------------------------------------------------

    async def catalogue(self, request: Request) -> Response:
        identity = await self._identity(request)
        filters = _filters(request)
        number = _page_number(request)
        query = ModelQuery(
            text=filters.get("q", ""),
            namespace=filters.get("namespace"),
            runtime=filters.get("runtime"),
            license=filters.get("license"),
            tag=filters.get("tag"),
            alias=filters.get("alias"),
        )
        # Filtered by who may see what before any counting or paging: no
        # count, facet or page tells of a model the caller may not see.
        found: ModelPage = await asyncio.to_thread(
            self.registry.search_models,
            query,
            visible=identity.can_see,
            offset=(number - 1) * PAGE_SIZE,
            limit=PAGE_SIZE,
        )
        rows = [
            {"info": v, "served": self._served(v), "url": f"/models/{v.namespace}/{v.name}"}
            for v in found.models
        ]
        pages = max(1, -(-found.matched // PAGE_SIZE))
        return self._render(
            request,
            "catalogue.html",
            identity=identity,
            rows=rows,
            filters=filters,
            options=found.facets,
            total=found.total,
            matched=found.matched,
            first=found.offset + 1,
            page=number,
            pages=pages,
            # Past the last page (an old link), "previous" leads to the last one.
            previous_url=_page_url(filters, min(number - 1, pages)) if number > 1 else None,
            next_url=_page_url(filters, number + 1) if number < pages else None,
        )

    def _served(self, info: VersionInfo) -> str | None:
        """The name this server serves the model under, if it serves it."""
        served = served_name(info.namespace, info.name)
        found = self.service.manager.identify(served)
        return served if found == (info.namespace, info.name) else None

    # -- a model ---------------------------------------------------------

    async def model(self, request: Request) -> Response:
        identity = await self._identity(request)
        namespace = request.path_params["namespace"]
        name = request.path_params["name"]
        if not NAMESPACE_RE.fullmatch(namespace) or not NAME_RE.fullmatch(name):
            raise NotFound(f"no model {namespace[:64]}/{name[:64]}")
        authorize(identity, "read", namespace, name)
        selector = request.query_params.get("version")
        if selector is not None and (len(selector) > _MAX_FILTER or not selector.strip()):
            raise InvalidInput("'version' must be a version or an alias")
        info, versions = await asyncio.to_thread(self._model, namespace, name, selector)
        manifest = info.manifest
        served = self._served(info)
        base = str(request.base_url).rstrip("/")
        examples = snippets(manifest, base, auth=self.service.access is not None)
        drift = None if served is None else self._drift(served)
        return self._render(
            request,
            "model.html",
            identity=identity,
            info=info,
            manifest=manifest,
            versions=versions,
            served=served,
            examples=examples,
            bibtex=bibtex(manifest, year=info.published_at.year),
            data_links={
                d.identifier: identifier_iri(d.identifier)
                for d in (*manifest.training_data, *manifest.validation_data)
            },
            doi_link=(
                identifier_iri(manifest.citation.doi)
                if manifest.citation is not None and manifest.citation.doi
                else None
            ),
            licence_link=_licence_link(manifest.license),
            drift=drift,
        )

    def _model(
        self, namespace: str, name: str, selector: str | None
    ) -> tuple[VersionInfo, list[VersionInfo]]:
        ref = Reference(namespace, name)
        try:
            versions = self.registry.versions(ref)
            if selector is None:
                return self.registry.resolve(ref), versions
        except NotFound:
            # One wording for every missing model, as for one the caller may not see.
            raise NotFound(f"no model {namespace}/{name}") from None
        try:
            return self.registry.resolve_selector(namespace, name, selector), versions
        except NotFound:
            raise NotFound(f"{namespace}/{name} has no version or alias {selector!r}") from None

    # -- live numbers ----------------------------------------------------

    async def live(self, request: Request) -> Response:
        """Counters of a served model (every loaded version); the page's
        script turns their changes into rates, latency quantiles and charts."""
        identity = await self._identity(request)
        name = request.path_params["name"]
        stats = await self.service.statistics(name, None, identity)
        requests = failures = rows = batches = 0
        batch_sizes: dict[int, int] = {}
        for entry in stats["model_stats"]:
            phases = entry["inference_stats"]
            requests += phases["success"]["count"] + phases["fail"]["count"]
            failures += phases["fail"]["count"]
            rows += entry["inference_count"]
            batches += entry["execution_count"]
            for batch in entry["batch_stats"]:
                size = batch["batch_size"]
                batch_sizes[size] = batch_sizes.get(size, 0) + batch["compute_infer"]["count"]
        loaded = self.service.manager.loaded_versions(name)
        queued = sum(m.batcher.queued for m in loaded if m.batcher is not None)
        buckets = self.service.metrics.latency_buckets(name)
        errors = self.service.metrics.error_counts(name)
        return self._json(
            {
                "name": name,
                "time": time.time(),
                "requests": requests,
                "failures": failures,
                "rows": rows,
                "batches": batches,
                "queue_depth": queued,
                "batch_sizes": [[size, count] for size, count in sorted(batch_sizes.items())],
                # Failed requests per error type, with the HTTP status it answers.
                "errors": [[kind.__name__, self._status_of(kind), n] for kind, n in errors],
                # Cumulative counts per upper bound (s); the last bound is +Inf, sent as null.
                "latency_buckets": [
                    [None if bound == float("inf") else bound, count] for bound, count in buckets
                ],
                "versions": [
                    {"version": e["version"], "state": e["state"], "reason": e["reason"]}
                    for e in stats["model_stats"]
                ],
                "drift": self._drift(name),
            }
        )

    def _drift(self, served: str) -> dict[str, Any]:
        """The monitor's judgement of each loaded version of served model
        ``served`` (the caller was authorised for it already)."""
        monitor = self.service.monitor
        if monitor is None:
            return {"enabled": False, "versions": []}
        loaded = self.service.manager.loaded_versions(served)
        judged = monitor.status([(m.served, m.version) for m in loaded])
        return {"enabled": True, "versions": [drift_view(s) for s in judged]}

    # -- jobs ------------------------------------------------------------

    async def jobs(self, request: Request) -> Response:
        identity = await self._identity(request)
        raw = request.query_params.get("state") or None
        if raw is not None and len(raw) > _MAX_FILTER:
            raise InvalidInput(f"the 'state' filter is longer than {_MAX_FILTER} characters")
        states = parse_states(raw) if raw is not None else None
        namespaces: list[str] | None
        if identity.can_see(ANY_NAMESPACE):
            namespaces = None
        else:
            namespaces = [
                ns for ns in identity.scopes if ns != ANY_NAMESPACE and identity.can_see(ns)
            ]
        records: list[JobRecord] = []
        schedules: list[tuple[Schedule, list[Run]]] = []
        if namespaces is None or namespaces:
            records = await asyncio.to_thread(
                self._job_store().find, namespaces=namespaces, states=states, limit=_MAX_JOBS
            )
            schedules = await asyncio.to_thread(self._schedules, identity)
        return self._render(
            request,
            "jobs.html",
            identity=identity,
            jobs=records,
            schedules=schedules,
            state=raw or "",
            limit=_MAX_JOBS,
        )

    def _schedules(self, identity: Identity) -> list[tuple[Schedule, list[Run]]]:
        """The schedules the caller may see, each with its latest runs."""
        store = ScheduleStore(self._job_store().engine)
        shown = [s for s in store.list() if identity.can_see(s.namespace)][:_MAX_SCHEDULES]
        return [
            (s, store.history(s.name, namespace=s.namespace, limit=_SCHEDULE_RUNS)) for s in shown
        ]

    async def job(self, request: Request) -> Response:
        identity = await self._identity(request)
        job_id = request.path_params["job_id"]
        store = self._job_store()
        record: JobRecord = await asyncio.to_thread(store.get, job_id)
        if not identity.can_see(record.namespace):
            raise NotFound(f"no job {job_id!r}")  # the very words of a missing job
        lines: list[JobLogLine] = await asyncio.to_thread(store.logs, job_id, limit=_MAX_LOG)
        dead = await asyncio.to_thread(read_dead_letters, record.out_dir)
        return self._render(
            request, "job.html", identity=identity, job=record, lines=lines, dead=dead
        )

    def _job_store(self) -> JobStore:
        return JobStore.of(self.registry)

    # -- benchmarks ------------------------------------------------------

    async def benchmarks(self, request: Request) -> Response:
        # The registry calls the REST API's leaderboard route makes, per
        # dataset (and split) that ranks a model the caller may see.
        identity = await self._identity(request)
        metric = request.query_params.get("metric")
        if metric is not None and (len(metric) > _MAX_FILTER or not metric.strip()):
            raise InvalidInput("'metric' must name a metric")
        boards = await asyncio.to_thread(self._boards, identity, metric)
        return self._render(
            request, "benchmarks.html", identity=identity, boards=boards, metric=metric
        )

    def _boards(self, identity: Identity, metric: str | None) -> list[dict[str, Any]]:
        records = self.registry.evaluations(limit=_MAX_RECORDS)
        metrics: dict[tuple[str, str], set[str]] = {}
        for record in records:
            if identity.can_see(record.namespace):
                metrics.setdefault((record.dataset, record.split), set()).update(record.metrics)
        boards = []
        for (dataset, split), names in sorted(metrics.items()):
            chosen = metric if metric in names else _default_metric(names)
            board = self.registry.leaderboard(
                dataset, chosen, split=split, visible=identity.can_see
            )
            if board.entries or board.unranked:
                rows = [(e, *_model_path(e.model)) for e in board.entries]
                boards.append({"board": board, "rows": rows, "metrics": sorted(names)})
        return boards

    async def report(self, request: Request) -> Response:
        identity = await self._identity(request)
        namespace = request.path_params["namespace"]
        name = request.path_params["name"]
        if not NAMESPACE_RE.fullmatch(namespace) or not NAME_RE.fullmatch(name):
            raise NotFound(f"no model {namespace[:64]}/{name[:64]}")
        authorize(identity, "read", namespace, name)
        record_id = request.path_params["record_id"]
        html = await asyncio.to_thread(self._report, identity, namespace, name, record_id)
        # The report's own policy, not the pages': its images and style are inline.
        headers = {**_HEADERS, "Content-Security-Policy": views.REPORT_CSP}
        return Response(html, 200, headers, media_type="text/html")

    def _report(self, identity: Identity, namespace: str, name: str, record_id: str) -> str:
        # A model that does not exist reads as an invisible one does.
        self.registry.versions(f"{namespace}/{name}")
        found = self.registry.evaluation(record_id)
        if (found.namespace, found.name) != (namespace, name) or not identity.can_see(
            found.dataset.split("/", 1)[0]
        ):
            raise NotFound(f"no evaluation record {record_id[:40]!r}")
        return views.report_html(self.registry, found)

    # -- admins ----------------------------------------------------------

    async def _admin(self, request: Request) -> Identity:
        identity = await self._identity(request)
        if not identity.is_admin:
            raise PermissionDenied(f"{identity.subject} needs the admin scope on '*'")
        return identity

    async def admin(self, request: Request) -> Response:
        identity = await self._admin(request)
        usage, events = await asyncio.to_thread(self._admin_data)
        return self._render(
            request, "admin.html", identity=identity, usage=usage, events=events, limit=_MAX_EVENTS
        )

    async def streams(self, request: Request) -> Response:
        # Pipelines belong to no namespace (their specs name models of any):
        # their sources, sinks and counts are for admins.
        identity = await self._admin(request)
        workers: list[WorkerStatus] = await asyncio.to_thread(
            read_statuses, self.registry.settings.home
        )
        return self._render(request, "streams.html", identity=identity, workers=workers)

    def _admin_data(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        usage = UsageStore(self.registry).report()[:_MAX_USAGE]
        return usage, self.registry.events(_MAX_EVENTS)

    # -- health ----------------------------------------------------------

    async def health_json(self, request: Request) -> Response:
        identity = await self._identity(request)
        report = await check_health(self.service, identity)
        return self._json(report.to_dict())

    async def health_page(self, request: Request) -> Response:
        identity = await self._identity(request)
        report = await check_health(self.service, identity)
        return self._render(request, "health.html", identity=identity, report=report)

    # -- static files ----------------------------------------------------

    async def static(self, request: Request) -> Response:
        name = request.path_params["file"]
        if name not in self._static:
            raise NotFound(f"no file {name[:64]!r}")
        return Response(
            self._static[name],
            media_type=_STATIC[name],
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
        )

    # -- sessions --------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        identity: Identity | None = None
        if self._logged_in(request):
            try:
                identity = await self._identity(request)
            except Unauthenticated:
                identity = None
        return self._login_form(request, 200, identity=identity, error=None)

    def _login_form(
        self, request: Request, status: int, *, identity: Identity | None, error: str | None
    ) -> Response:
        csrf = session.login_csrf(request)
        response = self._render(
            request, "login.html", status, identity, login_csrf=csrf, error=error
        )
        session.set_login_csrf(request, response, csrf)
        return response

    async def login(self, request: Request) -> Response:
        form = await _form(request)
        if not session.csrf_matches(request.cookies.get(session.LOGIN_COOKIE), form.get("csrf")):
            raise PermissionDenied(
                "the form is stale or was not sent from this dashboard: reload the login page"
            )
        if self.service.access is None:
            return RedirectResponse("/", 303, headers=dict(_HEADERS))
        token = (form.get("token") or "").strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        problem = None
        if not token:
            problem = "Paste an API token."
        elif not _TOKEN_RE.fullmatch(token):
            problem = "That is not an API token."
        else:
            try:
                await self.service.identify(f"Bearer {token}")
            except Unauthenticated:
                problem = "This token is not accepted: it is unknown, expired or revoked."
        if problem is not None:
            await self._denied(request, "unauthenticated")
            return self._login_form(request, 401, identity=None, error=problem)
        response = RedirectResponse("/", 303, headers=dict(_HEADERS))
        session.set_session(request, response, token)
        return response

    async def logout(self, request: Request) -> Response:
        form = await _form(request)
        token = session.session_token(request)
        expected = None if token is None else session.csrf_token(token)
        if not session.csrf_matches(expected, form.get("csrf")):
            raise PermissionDenied("the form is stale or was not sent from this dashboard")
        response = RedirectResponse("/login", 303, headers=dict(_HEADERS))
        session.clear_session(request, response)
        return response


_INTERNAL: Final = "Something went wrong on the server; its log has the details."
_TITLES: Final = {400: "Bad request", 403: "Forbidden", 404: "Not found", 413: "Too large"}


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form of at most :data:`_MAX_FORM` bytes; the first of each field."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("", "application/x-www-form-urlencoded"):
        raise InvalidInput("send the form as application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            raise InvalidInput(f"the form is larger than {_MAX_FORM} bytes")
    try:
        text = bytes(body).decode("utf-8")
        fields = parse_qs(text, keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput("the form is not valid: send it from the dashboard") from exc
    return {key: values[0] for key, values in fields.items() if values}


#: What a version's drift state means, for a row without a score above its threshold.
DRIFT_WORDS: Final = {
    "no_traffic": "no request of this version monitored yet",
    "no_reference": "no reference to compare with: store one (sciserve monitor reference, "
    "or POST /v2/sciserve/monitoring/NAME/reference)",
    "warming_up": "too few requests judged yet",
    "ok": "no score above its threshold",
    "alerting": "alert holds until every score is well below its threshold",
}


def drift_view(status: dict[str, Any]) -> dict[str, Any]:
    """What the dashboard shows of a version's drift judgement (from
    :meth:`~sciserve.monitoring.Monitor.status`): its state, since when it
    alerts, and each score above its threshold."""
    started = status.get("alert_started_at")
    reference = status.get("reference")
    return {
        "version": status["version"],
        "state": status["state"],
        "note": DRIFT_WORDS.get(str(status["state"]), ""),
        "since": None if started is None else _iso(float(started)),
        "rows_seen": status.get("rows_seen", 0),
        "rows_judged": status.get("rows_judged", 0),
        "reference": None
        if reference is None
        else {"source": reference["source"], "rows": reference["rows"]},
        "breaches": [
            {
                "name": b["name"],
                "kind": b["kind"],
                "score": round(float(b["score"]), 4),
                "threshold": float(b["threshold"]),
            }
            for b in status.get("breaches", [])
        ],
        "stale": list(status.get("stale", [])),
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _filters(request: Request) -> dict[str, str]:
    filters = {}
    for key in _FILTERS:
        value = request.query_params.get(key, "").strip()
        if len(value) > _MAX_FILTER:
            raise InvalidInput(f"the {key!r} filter is longer than {_MAX_FILTER} characters")
        if value:
            filters[key] = value
    return filters


def _page_number(request: Request) -> int:
    raw = request.query_params.get("page", "").strip()
    if not raw:
        return 1
    if not raw.isascii() or not raw.isdigit() or len(raw) > 8 or not 1 <= int(raw) <= _MAX_PAGE:
        raise InvalidInput(f"'page' must be a whole number from 1 to {_MAX_PAGE}")
    return int(raw)


def _page_url(filters: dict[str, str], number: int) -> str:
    """The catalogue's address for page ``number`` with the same filters."""
    params = dict(filters)
    if number > 1:
        params["page"] = str(number)
    return "/?" + urlencode(params) if params else "/"


_SPDX_ID: Final = re.compile(r"[A-Za-z0-9.+-]+")


def _licence_link(expression: str | None) -> str | None:
    """The SPDX page of a licence that is one plain identifier."""
    if expression and _SPDX_ID.fullmatch(expression):
        return f"https://spdx.org/licenses/{expression}.html"
    return None


def _published(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _default_metric(names: set[str]) -> str:
    return next((m for m in _DEFAULT_METRICS if m in names), min(names, default="accuracy"))


def _model_path(ref: str) -> tuple[str, str]:
    """``namespace`` and ``name`` of a leaderboard's ``namespace/name:version``."""
    namespace, _, rest = ref.partition("/")
    return namespace, rest.split(":", 1)[0]
