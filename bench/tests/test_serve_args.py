"""serve.py's options for the front ends: the scaling row's contenders and their cells."""

from __future__ import annotations

import pytest
from serve import ALL_SERVERS, _cells, parse_args
from servebench.servers import (
    NO_HTTP_FRONTENDS,
    SCALING_CELLS,
    ServerSpec,
    _frontends_missing,
    _serve_help,
    server_specs,
)


def _spec(key: str, http_frontends: int | None = None) -> ServerSpec:
    return next(s for s in server_specs(http_frontends) if s.key == key)


def test_the_scaling_contenders_can_be_selected() -> None:
    for key in ("sciserve-fe0", "sciserve-fe1", "sciserve-fe2"):
        assert key in ALL_SERVERS
    args = parse_args(["--servers", "sciserve-fe1,sciserve"])
    assert args.servers == ("sciserve-fe1", "sciserve")
    assert args.http_frontends is None
    assert args.baseline_p50_ms == 0.19


def test_front_end_counts_and_baselines_are_checked() -> None:
    assert parse_args(["--http-frontends", "2"]).http_frontends == 2
    assert parse_args(["--baseline-p50-ms", "0.25"]).baseline_p50_ms == 0.25
    for bad in ("-1", "two"):
        with pytest.raises(SystemExit):
            parse_args(["--http-frontends", bad])


def test_the_scaling_row_runs_its_own_cells_narrowed_by_explicit_options() -> None:
    spec = _spec("sciserve-fe2")
    assert spec.cells == SCALING_CELLS == ((16, 1), (16, 64))
    assert spec.protocols == ("http-binary",)
    assert _cells(spec, parse_args([])) == [(16, 1), (16, 64)]
    assert _cells(spec, parse_args(["--batch", "1"])) == [(16, 1)]
    assert _cells(spec, parse_args(["--concurrency", "1"])) == []
    # The main contenders measure the run's matrix.
    assert _cells(_spec("sciserve"), parse_args(["--batch", "1"])) is None


def test_front_ends_are_available_exactly_when_serve_has_the_option() -> None:
    has_them = "--http-frontends" in _serve_help()
    assert _frontends_missing(0)() is None  # today's sciserve has no front end anyway
    assert _frontends_missing(None)() is None
    expected = None if has_them else NO_HTTP_FRONTENDS
    assert _frontends_missing(1)() == expected
    assert _spec("sciserve-fe2").missing() == expected
    assert _spec("sciserve", 2).missing() == expected
