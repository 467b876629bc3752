"""Imports point down the layers, never up.

The core (packages, registry, access, runtimes, serving) knows nothing of
transports; the protocol adapters sit on the core; the server composes
them; streams, the SDK and the CLI use all of it.  An upward import is how a
transport detail leaks into the core, so this test names each one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sciserve

ROOT = Path(sciserve.__file__).parent

#: Layer of each top-level module or subpackage; a module may import only
#: from its own layer or lower ones.
LAYERS: dict[str, int] = {
    "errors": 0,
    "_version": 0,
    "_hashing": 0,
    "_yaml": 0,
    "_parent": 0,
    "config": 1,
    "datatypes": 1,
    "package": 2,
    "runtimes": 3,
    "registry": 4,
    "access": 5,
    # Job and schedule records: on the registry database, under the access rules.
    "jobs": 5,
    # Metrics, comparisons, plots and reports over arrays of model outputs:
    # numpy (and matplotlib) only; the runner takes any object with ``predict``.
    "evaluation": 5,
    "serving": 6,
    # Drift and staleness of served models: fed by the serving core's request path.
    "monitoring": 6,
    "protocol": 7,
    "server": 8,
    "model": 9,
    "examples": 9,
    "streams": 10,
    "batch": 10,
    "cli": 11,
    "__main__": 12,
    "__init__": 12,
}

#: Modules that belong to another layer than their package, and why.
OVERRIDES: dict[str, int] = {
    # Authoring tools: they inspect model files through the runtimes.
    "package.init": LAYERS["runtimes"],
    "package.validate": LAYERS["runtimes"],
    # The clients of the registry and jobs APIs: they speak the protocol's status codes.
    "registry.remote": LAYERS["protocol"],
    "jobs.remote": LAYERS["protocol"],
    # The spec language (parsing, filter expressions): pure data, no I/O;
    # the jobs API checks a submitted spec with it.
    "streams.spec": LAYERS["config"],
    "streams.expr": LAYERS["config"],
    # A pipeline's metrics and the status files it writes (the standard
    # library and prometheus_client only): the dashboard reads those files.
    "streams.metrics": LAYERS["config"],
}


def _layer(module: str) -> int:
    for prefix, layer in OVERRIDES.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    top = module.split(".")[0]
    assert top in LAYERS, f"{module} is in no layer: add {top!r} to LAYERS"
    return LAYERS[top]


def _imports() -> list[tuple[str, str]]:
    found = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "migrations" in parts:
            continue
        module = ".".join(parts)
        package = parts[:-1]
        if parts == ("__init__",):
            module = "__init__"
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = list(package[: len(package) - (node.level - 1)])
                targets = (
                    [".".join([*base, node.module])]
                    if node.module
                    else [".".join([*base, alias.name]) for alias in node.names]
                )
            elif node.module and node.module.startswith("sciserve."):
                targets = [node.module.removeprefix("sciserve.")]
            else:
                continue
            found += [(module, target) for target in targets if target]
    return found


def test_the_scan_sees_the_imports() -> None:
    imports = _imports()
    assert ("server", "serving.service") in imports
    assert ("protocol.rest_codec", "serving.types") in imports


def test_imports_point_down() -> None:
    upward = [
        f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
        for module, target in _imports()
        if _layer(target) > _layer(module)
    ]
    assert upward == []
