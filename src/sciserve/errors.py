"""The one error hierarchy of sciserve.

Every error sciserve raises on purpose derives from :class:`SciserveError`.
The classes describe *what went wrong in the domain*, never how a transport
reports it: the REST and gRPC adapters and the CLI each map these classes to
their own status codes in exactly one place.

::

    SciserveError
    ├── InvalidInput              the caller sent something unusable
    │   ├── ManifestError         a manifest breaks the schema (carries every Problem)
    │   ├── ArchiveError          a package archive is malformed or unsafe
    │   ├── InvalidReference      "ns/name:version" / "name@alias" cannot be parsed
    │   ├── PayloadTooLarge       over a configured size limit
    │   └── MetricInputError      labels or predictions a metric cannot use: NaN or
    │                             infinite values, labels outside the classes, rows
    │                             that are not probabilities, mismatched shapes, no rows
    ├── Unauthenticated           no, malformed, unknown, expired or revoked credentials
    ├── NotFound                  no such namespace / model / version / alias / file
    │                             (also: one the caller may not see)
    ├── Conflict                  the request contradicts existing state
    │   ├── VersionConflict       namespace/name:version exists with other content
    │   └── PolicyViolation       a promotion policy refuses the alias (carries the failures)
    ├── IntegrityError            stored bytes do not match their recorded digest
    ├── PermissionDenied          policy forbids it (e.g. code-executing runtime
    │                             in an untrusted namespace)
    ├── ReadOnlyRegistry          a write against a registry opened read-only
    ├── Unavailable               try again later
    │   ├── ModelNotReady
    │   └── Overloaded            queue full; carries ``retry_after`` seconds
    ├── RateLimited               over a rate or concurrency quota; carries ``retry_after``
    ├── DependencyMissing         an optional extra (torch, lightgbm, …) is not installed
    ├── DeviceUnavailable         the requested device (e.g. ``cuda:0``) is absent
    ├── ModelExecutionError       the model itself failed while running
    └── ConfigError               settings cannot be read or are inconsistent

Third-party exceptions are wrapped with ``raise … from exc`` so the cause is
kept for debugging but callers only need to know this hierarchy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "ArchiveError",
    "ConfigError",
    "Conflict",
    "DependencyMissing",
    "DeviceUnavailable",
    "IntegrityError",
    "InvalidInput",
    "InvalidReference",
    "ManifestError",
    "MetricInputError",
    "ModelExecutionError",
    "ModelNotReady",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionDenied",
    "PolicyViolation",
    "Problem",
    "RateLimited",
    "ReadOnlyRegistry",
    "SciserveError",
    "Unauthenticated",
    "Unavailable",
    "VersionConflict",
]


class SciserveError(Exception):
    """Base class of every error sciserve raises deliberately."""


class InvalidInput(SciserveError):
    """The caller sent something sciserve cannot use."""


@dataclass(frozen=True)
class Problem:
    """One finding of manifest validation.

    ``path`` locates the field (``inputs[0].datatype``), ``message`` says what
    is wrong and ``hint`` how to fix it.  ``severity`` is ``"error"`` or
    ``"warning"``; warnings never block publishing.
    """

    path: str
    message: str
    hint: str = ""
    severity: str = "error"

    def __str__(self) -> str:
        text = f"{self.path or '<manifest>'}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


class ManifestError(InvalidInput):
    """A manifest failed validation; ``problems`` lists every finding."""

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        #: The manifest data that failed, when it was read (for further checks).
        self.data: Any = None
        head = f"invalid manifest{f' {source}' if source else ''}"
        errors = [p for p in self.problems if p.severity == "error"]
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in errors or self.problems))


class ArchiveError(InvalidInput):
    """A package archive is malformed, truncated or unsafe to unpack."""


class InvalidReference(InvalidInput):
    """A model reference string cannot be parsed."""


class PayloadTooLarge(InvalidInput):
    """Input exceeds a configured size limit."""


class MetricInputError(InvalidInput):
    """Labels or predictions that an evaluation metric cannot use.

    Raised before any number is computed: a metric over NaN probabilities or
    labels the model does not know would be a wrong answer, not an error.
    """


class Unauthenticated(SciserveError):
    """Credentials are missing, malformed, unknown, expired or revoked."""


class NotFound(SciserveError):
    """The named namespace, model, version, alias or file does not exist
    (or the caller may not see it: the two are deliberately indistinguishable)."""


class Conflict(SciserveError):
    """The request contradicts existing state."""


class VersionConflict(Conflict):
    """``namespace/name:version`` is already published with different content."""


class PolicyViolation(Conflict):
    """A promotion policy refuses to let a version take an alias.

    ``failures`` lists each failing requirement with the metric, the value the
    newest evaluation record holds (``None`` when there is none) and the
    threshold, so adapters can return them as data.
    """

    def __init__(self, message: str, failures: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.failures = list(failures or [])


class IntegrityError(SciserveError):
    """Stored bytes do not match the digest recorded for them."""

    def __init__(self, message: str, *, path: str = "", expected: str = "", actual: str = ""):
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(message)


class PermissionDenied(SciserveError):
    """Policy forbids the operation."""


class ReadOnlyRegistry(SciserveError):
    """A write was attempted on a registry opened read-only."""


class Unavailable(SciserveError):
    """The operation may succeed if retried later."""


class ModelNotReady(Unavailable):
    """The model exists but is not (yet, or any more) ready to serve."""


class Overloaded(Unavailable):
    """A bounded queue is full; ``retry_after`` suggests when to retry (s)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class RateLimited(SciserveError):
    """A rate or concurrency quota is exhausted; ``retry_after`` is in seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class DependencyMissing(SciserveError):
    """An optional dependency is not installed; the message names the extra."""


class DeviceUnavailable(SciserveError):
    """The requested device is not present on this machine."""


class ModelExecutionError(SciserveError):
    """The model raised or crashed while computing a result."""


class ConfigError(SciserveError):
    """Settings cannot be read or are inconsistent."""
