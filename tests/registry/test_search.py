"""Listing and searching models: the default version of each, in a fixed
number of queries, paged and filtered after who may see what (SQLite and
PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from sciserve.access._db import engine_of
from sciserve.config import Settings
from sciserve.errors import NotFound
from sciserve.registry import db
from sciserve.registry.registry import Registry, VersionInfo
from sciserve.registry.search import ModelQuery

from helpers.packages import make_onnx_package


def _publish(
    reg: Registry, root: Path, namespace: str, name: str, version: str, **extra: object
) -> None:
    reg.publish(
        make_onnx_package(
            root / f"{namespace}-{name}-{version}",
            name=name,
            namespace=namespace,
            version=version,
            extra=dict(extra),
        )
    )


@pytest.fixture
def world(registry: Registry, tmp_path: Path) -> Registry:
    """Three namespaces; aliases on old versions, yanks, a model with every version yanked."""
    reg = registry
    _publish(reg, tmp_path, "alpha", "plain", "1.0.0")
    _publish(reg, tmp_path, "alpha", "plain", "1.10.0")
    _publish(reg, tmp_path, "alpha", "plain", "1.2.0")
    reg.tag("alpha/plain:1.0.0", "staging")  # an alias on a version that is not the default
    _publish(reg, tmp_path, "alpha", "prod", "1.0.0", tags=["lensing"], license="Apache-2.0")
    _publish(reg, tmp_path, "alpha", "prod", "2.0.0", tags=["spectra"], license="MIT")
    reg.tag("alpha/prod:1.0.0", "production")  # the default, though 2.0.0 is newer
    _publish(reg, tmp_path, "alpha", "gone", "1.0.0")
    _publish(reg, tmp_path, "alpha", "gone", "2.0.0")
    reg.yank("alpha/gone:1.0.0", "broken")
    reg.yank("alpha/gone:2.0.0", "broken too")
    _publish(
        reg, tmp_path, "beta", "secret", "1.0.0", description="hidden transients", tags=["lensing"]
    )
    _publish(reg, tmp_path, "gamma", "half", "1.0.0", license="BSD-3-Clause")
    _publish(reg, tmp_path, "gamma", "half", "2.0.0", license="BSD-3-Clause")
    reg.yank("gamma/half:2.0.0", "bad calibration")  # latest is 1.0.0 again
    return reg


def _key(info: VersionInfo) -> tuple[str, str, str, tuple[str, ...], bool]:
    return (info.ref, info.digest, info.published_at.isoformat(), info.aliases, info.yanked)


def _one_by_one(reg: Registry, info: VersionInfo) -> VersionInfo:
    """A model's default version the slow way: the rules list_models stands for."""
    try:
        return reg.resolve(f"{info.namespace}/{info.name}")
    except NotFound:  # every version yanked: the newest of them
        return reg.versions(f"{info.namespace}/{info.name}")[0]


def _everyone(namespace: str) -> bool:
    return True


def test_list_models_gives_each_models_default_version(world: Registry) -> None:
    listed = world.list_models()
    assert [(v.namespace, v.name, v.version) for v in listed] == [
        ("alpha", "gone", "2.0.0"),
        ("alpha", "plain", "1.10.0"),
        ("alpha", "prod", "1.0.0"),
        ("beta", "secret", "1.0.0"),
        ("gamma", "half", "1.0.0"),
    ]
    assert [_key(v) for v in listed] == [_key(_one_by_one(world, v)) for v in listed]
    assert listed[2].aliases == ("production",)  # 2.0.0 is latest, not this one
    assert listed[4].aliases == ("latest",)
    assert [v.name for v in world.list_models("gamma")] == ["half"]
    assert world.list_models("nobody") == []


def test_pages_put_together_are_the_whole_list(world: Registry) -> None:
    whole = world.list_models()
    seen: list[VersionInfo] = []
    for offset in range(0, 6, 2):
        page = world.search_models(ModelQuery(), visible=_everyone, offset=offset, limit=2)
        assert (page.matched, page.total, page.offset, page.limit) == (5, 5, offset, 2)
        assert len(page.models) == min(2, 5 - offset)
        seen += page.models
    assert [_key(v) for v in seen] == [_key(v) for v in whole]
    past = world.search_models(ModelQuery(), visible=_everyone, offset=40, limit=2)
    assert past.models == [] and past.matched == 5
    with pytest.raises(ValueError, match="negative"):
        world.search_models(ModelQuery(), visible=_everyone, offset=-1)


def test_filters_match_the_default_version_and_aliases_of_any_version(world: Registry) -> None:
    def names(**query: str) -> list[str]:
        page = world.search_models(ModelQuery(**query), visible=_everyone)  # type: ignore[arg-type]
        return [f"{v.namespace}/{v.name}" for v in page.models]

    assert names(text="TRANSIENTS hidden") == ["beta/secret"]
    assert names(text="transients nothing") == []
    assert names(text="alpha") == ["alpha/gone", "alpha/plain", "alpha/prod"]
    # The default version of alpha/prod (1.0.0) is tagged lensing; 2.0.0, spectra.
    assert names(tag="lensing") == ["alpha/prod", "beta/secret"]
    assert names(tag="spectra") == []
    assert names(license="Apache-2.0") == ["alpha/prod"]
    assert names(license="BSD-3-Clause", namespace="gamma") == ["gamma/half"]
    assert names(namespace="gamma", runtime="torchscript") == []
    assert names(alias="staging") == ["alpha/plain"]
    # Every model with a version that is not yanked has a latest.
    assert names(alias="latest") == ["alpha/plain", "alpha/prod", "beta/secret", "gamma/half"]
    assert names(alias="production") == ["alpha/prod"]


def test_models_the_caller_may_not_see_count_nowhere(world: Registry) -> None:
    def not_beta(namespace: str) -> bool:
        return namespace != "beta"

    page = world.search_models(ModelQuery(tag="lensing"), visible=not_beta, limit=1)
    assert [v.ref for v in page.models] == ["alpha/prod:1.0.0"]
    assert (page.matched, page.total) == (1, 4)
    assert "beta" not in page.facets["namespace"]
    # Only beta/secret says "transients": no trace of it, not even a count.
    hidden = world.search_models(ModelQuery(text="transients"), visible=not_beta)
    assert (hidden.models, hidden.matched) == ([], 0)
    nothing = world.search_models(ModelQuery(), visible=lambda ns: False)
    assert (nothing.models, nothing.matched, nothing.total) == ([], 0, 0)
    assert nothing.facets == {"namespace": [], "runtime": [], "license": [], "tag": []}


def test_facets_are_the_values_over_the_visible_models(world: Registry) -> None:
    page = world.search_models(ModelQuery(namespace="gamma"), visible=_everyone)
    # Facets describe everything visible, not only what matched, so a filter can be changed.
    assert page.facets == {
        "namespace": ["alpha", "beta", "gamma"],
        "runtime": ["onnx"],
        "license": ["Apache-2.0", "BSD-3-Clause", "MIT"],
        "tag": ["lensing"],
    }


def test_a_search_sees_every_change_at_once(world: Registry, tmp_path: Path) -> None:
    def listed() -> list[tuple[str, str, tuple[str, ...]]]:
        page = world.search_models(ModelQuery(), visible=_everyone)
        return [(v.ref, v.manifest.license or "", v.aliases) for v in page.models]

    before = listed()
    assert ("alpha/plain:1.10.0", "MIT", ("latest",)) in before
    # A rename rewrites every manifest (a new digest): nothing read before may linger.
    world.rename_model("alpha", "plain", "renamed")
    _publish(world, tmp_path, "alpha", "renamed", "2.0.0", license="Apache-2.0")
    world.tag("alpha/prod:2.0.0", "production")
    world.yank("gamma/half:1.0.0", "recalled")
    after = listed()
    assert ("alpha/renamed:2.0.0", "Apache-2.0", ("latest",)) in after
    assert not any(ref.startswith("alpha/plain") for ref, _, _ in after)
    assert ("alpha/prod:2.0.0", "MIT", ("latest", "production")) in after
    assert ("gamma/half:2.0.0", "BSD-3-Clause", ()) in after  # every version yanked
    assert [_key(v) for v in world.list_models()] == [
        _key(_one_by_one(world, v)) for v in world.list_models()
    ]
    renamed = world.search_models(ModelQuery(text="renamed"), visible=_everyone)
    assert [v.name for v in renamed.models] == ["renamed"]


@pytest.mark.postgres
def test_a_change_committed_after_a_newer_one_is_seen(tmp_path: Path, postgres_url: str) -> None:
    """On PostgreSQL a transaction may take an event id, and commit after a
    later one did: the catalogue read in between must not hide its change."""
    settings = Settings.load(tmp_path / "home", environ={}, database_url=postgres_url)
    with Registry(settings) as reg:
        _publish(reg, tmp_path, "alpha", "m", "1.0.0")
        _publish(reg, tmp_path, "alpha", "m", "2.0.0")

        def default() -> str:
            [info] = reg.search_models(ModelQuery(), visible=_everyone).models
            return info.version

        assert default() == "2.0.0"
        old = reg.resolve("alpha/m:1.0.0")
        engine = engine_of(reg)
        with engine.connect() as late, late.begin():
            # The slow writer takes its event id first ...
            late.execute(
                sa.insert(db.events).values(
                    at=db.utcnow(), action="tag", subject=old.ref, detail="{}"
                )
            )
            # ... a quick one commits a newer event, and the catalogue is read.
            reg.tag("alpha/m:2.0.0", "staging")
            assert default() == "2.0.0"
            model_id = late.execute(sa.select(db.models.c.id)).scalar_one()
            version_id = late.execute(
                sa.select(db.versions.c.id).where(db.versions.c.version == "1.0.0")
            ).scalar_one()
            late.execute(
                sa.insert(db.aliases).values(
                    model_id=model_id,
                    alias="production",
                    version_id=version_id,
                    updated_at=db.utcnow(),
                )
            )
        assert reg.resolve("alpha/m").version == "1.0.0"
        assert default() == "1.0.0"


def test_after_a_few_writes_only_the_models_they_name_are_read_again(
    world: Registry, tmp_path: Path
) -> None:
    """The catalogue kept between reads is brought up to date model by model:
    after every kind of write it equals a catalogue read whole by a registry
    that kept nothing, and models no write named keep their entries."""

    def listed(reg: Registry) -> list[tuple[str, str, tuple[str, ...]]]:
        page = reg.search_models(ModelQuery(), visible=_everyone)
        return [(v.ref, v.digest, v.aliases) for v in page.models]

    listed(world)  # read whole once, then kept
    untouched = {m.name: e for m, e in world._kept.items if m.name == "half"}  # type: ignore[union-attr]
    writes = [
        lambda: _publish(world, tmp_path, "alpha", "newcomer", "0.1.0"),
        lambda: _publish(world, tmp_path, "aardvark", "first", "1.0.0"),  # sorts first
        lambda: world.tag("alpha/plain:1.2.0", "production"),
        lambda: world.untag("alpha/plain", "production"),
        lambda: world.yank("alpha/plain:1.10.0", "recalled"),
        lambda: world.unyank("alpha/plain:1.10.0"),
        lambda: world.unyank("alpha/gone:2.0.0"),
        lambda: world.create_namespace("delta"),  # changes no entry
    ]
    with Registry(world.settings) as fresh:
        for write in writes:
            write()
            assert listed(world) == listed(fresh)
            fresh._kept = None  # the other one reads whole every time
    kept = {m.name: e for m, e in world._kept.items if m.name == "half"}  # type: ignore[union-attr]
    assert kept["half"] is untouched["half"]  # not read again


def test_many_writes_or_an_unknown_one_read_the_catalogue_whole(
    world: Registry, tmp_path: Path
) -> None:
    listed = lambda: [  # noqa: E731
        v.ref for v in world.search_models(ModelQuery(), visible=_everyone).models
    ]
    listed()
    half = next(e for m, e in world._kept.items if m.name == "half")  # type: ignore[union-attr]
    engine = engine_of(world)
    with engine.begin() as conn:  # an action this version does not know
        conn.execute(
            sa.insert(db.events).values(
                at=db.utcnow(), action="model.merge", subject="gamma/half", detail="{}"
            )
        )
    assert "gamma/half:1.0.0" in listed()
    again = next(e for m, e in world._kept.items if m.name == "half")  # type: ignore[union-attr]
    assert again is not half  # read whole: every entry made anew
    for i in range(70):  # more than are caught up one by one
        world.tag("alpha/plain:1.0.0", f"a{i}")
    assert "alpha/plain:1.10.0" in listed()
    with Registry(world.settings) as fresh:
        assert world.search_models(ModelQuery(), visible=_everyone) == fresh.search_models(
            ModelQuery(), visible=_everyone
        )
