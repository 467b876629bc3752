"""A registry on another machine, reached over the sciserve HTTP API.

:class:`RemoteRegistry` offers the read and publish methods of
:class:`~sciserve.registry.registry.Registry` with the same names, arguments
and return types, so code written against a local registry works against a
server (``sciserve --server URL``).  Errors the server reports come back as
the same :mod:`sciserve.errors` classes a local registry would raise.  The
``actor`` argument of changes is accepted and not sent: a server records the
caller its credentials name.

Packages travel as single ``.tar.gz`` files, streamed in
:data:`~sciserve._hashing.CHUNK` pieces both ways, so a many-GB package is
never held in memory.  A pulled package is unpacked with the same safety
rules as any archive from a stranger, and every file is checked against the
manifest, and the manifest against the digest the server announced, before
the package appears at its destination.

This module also defines the wire format of the registry API (the
:func:`version_to_wire` family); :mod:`sciserve.protocol.rest` serves it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
import platformdirs

from .._hashing import CHUNK, sha256_file
from ..config import Limits
from ..errors import (
    Conflict,
    IntegrityError,
    InvalidInput,
    NotFound,
    SciserveError,
    Unavailable,
)
from ..package.archive import pack, unpack
from ..package.manifest import (
    DATASET,
    KINDS,
    MANIFEST_NAME,
    MODEL,
    Manifest,
    load_manifest,
    parse_manifest,
)
from ..package.reference import Reference, parse_reference
from ..protocol.client import error_from_response
from .leaderboard import Board, Direction
from .promotion import DEFAULT_SPLIT, EvaluationInfo, Policy
from .registry import NamespaceInfo, Progress, PublishResult, VerifyReport, VersionInfo

__all__ = [
    "REGISTRY_PREFIX",
    "RemoteRegistry",
    "namespace_from_wire",
    "namespace_to_wire",
    "reference_path",
    "version_from_wire",
    "version_to_wire",
]

#: Where the registry API lives on a sciserve server.
REGISTRY_PREFIX = "/v2/sciserve/registry"

# -- wire format -------------------------------------------------------------


def version_to_wire(info: VersionInfo) -> dict[str, Any]:
    """``info`` as JSON data: :meth:`VersionInfo.to_dict` plus what it leaves out
    (the manifest and the yank time), so :func:`version_from_wire` can rebuild it."""
    data = info.to_dict()
    data["yanked_at"] = info.yanked_at.isoformat() if info.yanked_at is not None else None
    data["manifest"] = info.manifest.to_dict()
    return data


def version_from_wire(data: object) -> VersionInfo:
    """Rebuild a :class:`VersionInfo` sent by :func:`version_to_wire`.

    The digest is over the manifest, so a manifest that does not hash to the
    digest sent with it is refused with :class:`IntegrityError`.
    """
    try:
        data = _record(data)
        manifest = parse_manifest(data["manifest"], "server response")
        yanked_at = data.get("yanked_at")
        info = VersionInfo(
            manifest=manifest,
            digest=str(data["digest"]),
            size=int(data["size"]),
            published_at=datetime.fromisoformat(data["published_at"]),
            published_by=data.get("published_by"),
            yanked_at=datetime.fromisoformat(yanked_at) if yanked_at else None,
            yanked_reason=data.get("yanked_reason"),
            aliases=tuple(str(a) for a in data.get("aliases", ())),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SciserveError(f"malformed version record from the server: {exc!r}") from exc
    if manifest.digest != info.digest:
        raise IntegrityError(
            f"the server sent {manifest.ref} with digest {info.digest}, but its manifest "
            f"hashes to {manifest.digest}",
            expected=info.digest,
            actual=manifest.digest,
        )
    return info


def namespace_to_wire(info: NamespaceInfo) -> dict[str, Any]:
    """``info`` as JSON data."""
    return {
        "name": info.name,
        "trusted": info.trusted,
        "description": info.description,
        "created_at": info.created_at.isoformat(),
    }


def namespace_from_wire(data: object) -> NamespaceInfo:
    """Rebuild a :class:`NamespaceInfo` sent by :func:`namespace_to_wire`."""
    try:
        data = _record(data)
        return NamespaceInfo(
            name=str(data["name"]),
            trusted=bool(data["trusted"]),
            description=data.get("description"),
            created_at=datetime.fromisoformat(data["created_at"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SciserveError(f"malformed namespace record from the server: {exc!r}") from exc


def _record(data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"expected an object, got {type(data).__name__}")
    return data


def reference_path(ref: Reference, kind: str = MODEL) -> str:
    """The API path (under :data:`REGISTRY_PREFIX`) of the version ``ref`` names.

    ``/models/NS/NAME`` (``/datasets/…`` for a dataset) for the default
    version, ``…/versions/V`` for an exact version and ``…/aliases/A`` for
    an alias.
    """
    path = f"/{_plural(kind)}/{_segment(ref.namespace)}/{_segment(ref.name)}"
    if ref.version is not None:
        return f"{path}/versions/{_segment(ref.version)}"
    if ref.alias is not None:
        return f"{path}/aliases/{_segment(ref.alias)}"
    return path


def _plural(kind: str | None) -> str:
    if kind not in KINDS:
        raise ValueError(f"a server's registry API names the kind: {KINDS}, not {kind!r}")
    return f"{kind}s"


def _kind(kind: str | None) -> str:
    # A server's routes name the kind; "either" (a local registry's None) is
    # asked of a server as a model.
    return MODEL if kind is None else kind


def _segment(value: str) -> str:
    return quote(value, safe="")


def _model_path(ref: str) -> str:
    """The API path of the model (not a version) ``ref`` names."""
    r = _reference(ref)
    return reference_path(Reference(r.namespace, r.name))


# -- the client --------------------------------------------------------------


class RemoteRegistry:
    """The registry of the sciserve server at ``url``, e.g. ``http://host:8000``.

    Use as a context manager or call :meth:`close`.  ``cache_dir`` is where
    :meth:`pull` without a destination keeps packages (default: the user
    cache directory).  ``timeout`` bounds connecting and each read; the
    server-side work of publishing, verifying and packing a download can take
    as long as hashing the package, so those calls wait without a read
    timeout.  ``transport`` and ``headers`` are handed to :class:`httpx.Client`
    (e.g. to add credentials).
    """

    def __init__(
        self,
        url: str,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
        limits: Limits | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # "host:port" as tritonclient takes it means plain HTTP.
        self.url = (url if "://" in url else f"http://{url}").rstrip("/")
        self.cache_dir = (
            Path(cache_dir)
            if cache_dir is not None
            else Path(platformdirs.user_cache_dir("sciserve")) / "packages"
        )
        self.limits = limits or Limits()
        self._slow = httpx.Timeout(timeout, read=None)
        self._client = httpx.Client(
            base_url=self.url + REGISTRY_PREFIX,
            timeout=timeout,
            headers=headers,
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteRegistry({self.url!r})"

    # -- queries ---------------------------------------------------------

    def namespaces(self) -> list[NamespaceInfo]:
        """Every namespace, by name."""
        data = self._json("GET", "/namespaces")
        return [namespace_from_wire(item) for item in _field(data, "namespaces")]

    def list_models(self, namespace: str | None = None, *, kind: str = MODEL) -> list[VersionInfo]:
        """The default version of every model (or ``kind``) the caller may see."""
        return self.list_visible(namespace, kind=kind)[0]

    def list_datasets(self, namespace: str | None = None) -> list[VersionInfo]:
        """The default version of every dataset the caller may see."""
        return self.list_visible(namespace, kind=DATASET)[0]

    def list_visible(
        self, namespace: str | None = None, *, kind: str = MODEL
    ) -> tuple[list[VersionInfo], bool]:
        """:meth:`list_models`, and whether the caller sees every namespace (an admin):
        only then does an empty list mean that nothing is published."""
        params = {"namespace": namespace} if namespace is not None else None
        data = self._json("GET", f"/{_plural(kind)}", params=params)
        models = [version_from_wire(item) for item in _field(data, _plural(kind))]
        return models, data.get("complete") is True

    def versions(self, ref: str | Reference, *, kind: str = MODEL) -> list[VersionInfo]:
        """Every version of a model (or dataset), newest first (yanked ones included)."""
        r = _reference(ref)
        path = reference_path(Reference(r.namespace, r.name), kind) + "/versions"
        return [version_from_wire(item) for item in _field(self._json("GET", path), "versions")]

    def resolve(self, ref: str | Reference, *, kind: str = MODEL) -> VersionInfo:
        """The version a reference means (see :mod:`sciserve.package.reference`)."""
        return version_from_wire(self._json("GET", reference_path(_reference(ref), kind)))

    def resolve_dataset(self, ref: str | Reference) -> VersionInfo:
        """The dataset version a reference means."""
        return self.resolve(ref, kind=DATASET)

    def croissant(self, ref: str | Reference) -> dict[str, Any]:
        """The Croissant document of a dataset version."""
        document = self._json("GET", reference_path(_reference(ref), DATASET) + "/croissant")
        return _record(document)

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent registry events (audit trail), newest first."""
        data = self._json("GET", "/events", params={"limit": limit})
        return list(_field(data, "events"))

    # -- changes ---------------------------------------------------------

    def publish(
        self,
        source: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        actor: str | None = None,
    ) -> PublishResult:
        """Publish the package directory or archive at ``source``.

        A directory is packed to a temporary ``.tar.gz`` first; an archive is
        sent as it is.  ``progress`` is called with the bytes of the archive
        as they are sent.  Raises like :meth:`Registry.publish`, e.g.
        :class:`~sciserve.errors.VersionConflict`.
        """
        source = Path(source)
        if source.is_dir():
            # Fail here, with every problem named, rather than after an upload.
            manifest = load_manifest(
                source / MANIFEST_NAME, max_bytes=self.limits.max_manifest_bytes
            )
            with tempfile.TemporaryDirectory(prefix="sciserve-publish-") as tmp:
                archive = pack(source, Path(tmp) / "package.tar.gz")
                return self._upload(archive, progress, manifest.kind)
        if not source.is_file():
            raise NotFound(f"no package directory or archive at {source}")
        # An archive is sent unread: the server says if it is a dataset's.
        return self._upload(source, progress, MODEL)

    def _upload(self, archive: Path, progress: Progress | None, kind: str) -> PublishResult:
        size = archive.stat().st_size
        response = self._send(
            "POST",
            f"/{_plural(kind)}",
            content=_read_chunks(archive, progress),
            # A known length lets the server refuse an oversized upload at once.
            headers={"Content-Type": "application/gzip", "Content-Length": str(size)},
            timeout=self._slow,
        )
        data = _json_body(response)
        return PublishResult(version_from_wire(_field(data, "version")), bool(data["created"]))

    def tag(
        self,
        ref: str,
        alias: str,
        *,
        actor: str | None = None,
        kind: str | None = MODEL,
        force: bool = False,
    ) -> VersionInfo:
        """Point ``alias`` of the model (or dataset) at the version ``ref`` names
        (``force``: past a promotion policy)."""
        r = _reference(ref)
        body: dict[str, Any] = {"version": r.version, "alias": r.alias}
        if force:
            body["force"] = True
        path = reference_path(Reference(r.namespace, r.name, alias=alias), _kind(kind))
        return version_from_wire(self._json("PUT", path, json=body))

    # -- promotion policies and evaluation records --------------------------

    def set_policy(
        self,
        model: str,
        requirements: Sequence[str],
        *,
        alias: str = "production",
        split: str = DEFAULT_SPLIT,
        actor: str | None = None,
    ) -> Policy:
        """Require passing evaluations before a version of ``model`` takes ``alias``."""
        path = _model_path(model) + f"/policies/{_segment(alias)}"
        body = {"require": list(requirements), "split": split}
        return Policy.from_dict(self._json("PUT", path, json=body))

    def policies(self, model: str) -> list[Policy]:
        data = self._json("GET", _model_path(model) + "/policies")
        return [Policy.from_dict(p) for p in _field(data, "policies")]

    def clear_policy(
        self, model: str, *, alias: str = "production", actor: str | None = None
    ) -> None:
        self._send("DELETE", _model_path(model) + f"/policies/{_segment(alias)}")

    def add_evaluation(
        self,
        ref: str,
        *,
        dataset: str,
        dataset_version: str,
        dataset_digest: str,
        split: str,
        metrics: dict[str, Any],
        record: dict[str, Any],
        actor: str | None = None,
    ) -> EvaluationInfo:
        """Store an evaluation record of the exact version ``ref`` names (admin)."""
        version = self.resolve(ref).version
        body = {
            "version": version,
            "dataset": dataset,
            "dataset_version": dataset_version,
            "dataset_digest": dataset_digest,
            "split": split,
            "metrics": metrics,
            "record": record,
        }
        data = self._json("POST", _model_path(ref) + "/evaluations", json=body)
        return EvaluationInfo.from_dict(data)

    def leaderboard(
        self,
        dataset: str,
        metric: str,
        *,
        split: str = DEFAULT_SPLIT,
        direction: Direction | None = None,
        visible: Any = None,
    ) -> Board:
        """Model versions ranked by ``metric`` on ``dataset``, as the server lets the caller see."""
        d = _reference(dataset)
        params: dict[str, Any] = {"metric": metric, "split": split}
        if direction is not None:
            params["direction"] = direction.value
        path = f"/leaderboards/{_segment(d.namespace)}/{_segment(d.name)}"
        return Board.from_dict(self._json("GET", path, params=params))

    def evaluations(
        self, ref: str | None = None, *, dataset: str | None = None, limit: int = 1000
    ) -> list[EvaluationInfo]:
        """Evaluation records of one model (or version), newest first."""
        if ref is None:
            raise InvalidInput("name a model: a server lists evaluations per model")
        r = _reference(ref)
        params: dict[str, Any] = {"limit": limit}
        if r.version is not None or r.alias is not None:
            params["version"] = self.resolve(ref).version
        if dataset is not None:
            d = _reference(dataset)
            params["dataset"] = f"{d.namespace}/{d.name}"
        data = self._json("GET", _model_path(ref) + "/evaluations", params=params)
        return [EvaluationInfo.from_dict(e) for e in _field(data, "evaluations")]

    def untag(
        self, ref: str, alias: str, *, actor: str | None = None, kind: str | None = MODEL
    ) -> None:
        """Remove ``alias`` from the model (or dataset) ``ref`` names."""
        r = _reference(ref)
        path = reference_path(Reference(r.namespace, r.name, alias=alias), _kind(kind))
        self._send("DELETE", path)

    def yank(
        self, ref: str, reason: str, *, actor: str | None = None, kind: str | None = MODEL
    ) -> VersionInfo:
        """Withdraw the exact version ``ref`` names, keeping its record and files."""
        path = reference_path(_reference(ref), _kind(kind)) + "/yank"
        return version_from_wire(self._json("POST", path, json={"reason": reason}))

    def unyank(
        self, ref: str, *, actor: str | None = None, kind: str | None = MODEL
    ) -> VersionInfo:
        """Undo :meth:`yank`."""
        path = reference_path(_reference(ref), _kind(kind)) + "/unyank"
        return version_from_wire(self._json("POST", path))

    def verify(self, ref: str | None = None, *, kind: str | None = MODEL) -> list[VerifyReport]:
        """Have the server re-hash the stored bytes of one version, or of all
        (of every kind: the server's ``/verify``)."""
        path = (
            "/verify" if ref is None else reference_path(_reference(ref), _kind(kind)) + "/verify"
        )
        data = self._json("POST", path, timeout=self._slow)
        try:
            return [
                VerifyReport(str(item["ref"]), int(item["checked"]), list(item["failures"]))
                for item in _field(data, "reports")
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise SciserveError(f"malformed verify report from the server: {exc!r}") from exc

    # -- tokens (admin) --------------------------------------------------

    def tokens(self) -> list[dict[str, Any]]:
        """Every API token of the server's registry, as
        :meth:`~sciserve.access.tokens.TokenRecord.to_dict` describes it (no secrets)."""
        return [_token(item) for item in _field(self._json("GET", "/tokens"), "tokens")]

    def create_token(
        self,
        subject: str,
        scopes: Mapping[str, Iterable[str]],
        *,
        priority: str = "interactive",
        expires_in: float | None = None,
        label: str | None = None,
        admin: bool = False,
        limit: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Mint a token on the server (admin only); the result's ``"token"`` is the
        token itself, which nobody can retrieve again."""
        body = {
            "subject": subject,
            "scopes": {ns: sorted(granted) for ns, granted in scopes.items()},
            "priority": priority,
            "expires_in": expires_in,
            "label": label,
            "admin": admin,
            "limit": dict(limit) if limit is not None else None,
        }
        return _token(self._json("POST", "/tokens", json=body))

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        """Revoke a token on the server (admin only); returns its record."""
        return _token(self._json("POST", f"/tokens/{_segment(token_id)}/revoke"))

    # -- files -----------------------------------------------------------

    def pull(
        self,
        ref: str | Reference,
        dest: str | os.PathLike[str] | None = None,
        *,
        progress: Progress | None = None,
        kind: str | None = MODEL,
    ) -> Path:
        """Download a package and materialise it as a directory, every file verified.

        Without ``dest`` the package goes to :attr:`cache_dir` (keyed by
        digest), where a cached copy is re-verified before it is returned.
        ``progress`` is called with the bytes of the archive as they arrive.
        """
        kind = _kind(kind)
        info = self.resolve(ref, kind=kind)
        target = (
            Path(dest) if dest is not None else self.cache_dir / info.digest.removeprefix("sha256:")
        )
        if target.is_dir() and (target / MANIFEST_NAME).is_file():
            if dest is not None or _files_match(target, info.manifest):
                return target
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Download and unpack beside the target so the final rename is atomic.
        scratch = target.parent / f".{target.name}.{uuid.uuid4().hex}.partial"
        scratch.mkdir()
        try:
            archive = scratch / "package.tar.gz"
            # An exact version: an alias moved meanwhile cannot change what arrives.
            path = reference_path(Reference(info.namespace, info.name, info.version), kind)
            self._download(path + "/archive", archive, progress)
            root = unpack(archive, scratch / "package", limits=self.limits)
            _check_package(root, info)
            try:
                os.replace(root, target)
            except OSError as exc:
                if target.is_dir():  # a concurrent pull got there first
                    return target
                raise Conflict(f"cannot write {target}: {exc}") from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return target

    def _download(self, path: str, dest: Path, progress: Progress | None) -> None:
        try:
            with self._client.stream("GET", path, timeout=self._slow) as response:
                if response.is_error:
                    response.read()
                    raise error_from_response(response)
                with dest.open("wb") as out:
                    for chunk in response.iter_bytes(CHUNK):
                        out.write(chunk)
                        if progress is not None:
                            progress(len(chunk))
        except httpx.HTTPError as exc:
            raise Unavailable(f"download from {self.url} failed: {exc}") from exc

    # -- plumbing --------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the sciserve server at {self.url}: {exc}") from exc
        if response.is_error:
            raise error_from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return _json_body(self._send(method, path, **kwargs))


def _token(data: object) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("token_id"), str):
        raise SciserveError("malformed token record from the server")
    return data


def _reference(ref: str | Reference) -> Reference:
    return parse_reference(ref) if isinstance(ref, str) else ref


def _read_chunks(path: Path, progress: Progress | None) -> Iterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk
            if progress is not None:
                progress(len(chunk))


def _json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise SciserveError(
            f"the server answered {response.request.url} with something that is not JSON"
        ) from exc


def _field(data: Any, key: str) -> Any:
    if not isinstance(data, dict) or key not in data:
        raise SciserveError(f"malformed response from the server: no {key!r}")
    return data[key]


def _files_match(root: Path, manifest: Manifest) -> bool:
    for entry in manifest.files:
        path = root / entry.path
        if not path.is_file() or sha256_file(path)[0] != entry.sha256:
            return False
    return True


def _check_package(root: Path, info: VersionInfo) -> None:
    """Refuse a downloaded package that is not exactly the version ``info`` describes."""
    manifest = load_manifest(root / MANIFEST_NAME)
    if manifest.digest != info.digest:
        raise IntegrityError(
            f"the server sent a package with digest {manifest.digest} for {info.ref}, "
            f"which has digest {info.digest}",
            expected=info.digest,
            actual=manifest.digest,
        )
    for entry in manifest.files:
        actual, _ = sha256_file(root / entry.path)
        if actual != entry.sha256:
            raise IntegrityError(
                f"{entry.path} of {info.ref} arrived corrupted",
                path=entry.path,
                expected=entry.sha256,
                actual=actual,
            )
