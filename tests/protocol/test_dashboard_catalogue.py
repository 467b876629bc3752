"""The catalogue's pages: more models than one page holds, a token that may
see only some of them, and hostile page numbers.

The dashboard application runs in process (the one ``sciserve serve``
builds, over a real registry with authentication on), so sixty models need
no server start.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from sciserve.access.layer import AccessLayer
from sciserve.access.tokens import TokenStore
from sciserve.config import ServingConfig, Settings
from sciserve.protocol.dashboard import app as dashboard
from sciserve.protocol.rest import create_app
from sciserve.registry.registry import Registry
from sciserve.serving.service import InferenceService

from helpers.packages import make_onnx_package

PAGE = dashboard.PAGE_SIZE
#: Models of alpha: more than a page, fewer than two; three in four are "many".
ALPHA = PAGE + 30
MANY = [f"alpha/m{i:03d}" for i in range(ALPHA) if i % 4]


@dataclass
class World:
    client: httpx.AsyncClient
    alpha: str  # a token that may read namespace alpha only
    admin: str

    async def page(self, token: str, **params: str) -> httpx.Response:
        return await self.client.get(
            "/", params=params, headers={"Authorization": f"Bearer {token}"}
        )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A registry's home, a token of alpha and an admin's token."""
    work = tmp_path_factory.mktemp("catalogue")
    home = work / "home"
    with Registry(Settings.load(home, environ={})) as reg:
        pkg = work / "pkg"
        for i in range(ALPHA):
            extra = {"tags": ["many" if i % 4 else "few"], "description": f"number {i}"}
            reg.publish(make_onnx_package(pkg, name=f"m{i:03d}", namespace="alpha", extra=extra))
        for i in range(3):
            extra = {"tags": ["many"], "description": f"secret number {i}"}
            reg.publish(make_onnx_package(pkg, name=f"s{i}", namespace="beta", extra=extra))
        reg.tag("beta/s0", "staging")
        tokens = TokenStore(reg)
        alpha = tokens.create("alice", {"alpha": ["read"]})[1]
        admin = tokens.create("root", {}, admin=True)[1]
    return home, alpha, admin


@pytest.fixture
async def world(home: tuple[Path, str, str]) -> AsyncIterator[World]:
    root, alpha, admin = home
    settings = Settings.load(root, environ={"SCISERVE_ACCESS_ENABLED": "true"})
    with Registry(settings) as reg:
        service = InferenceService(reg, ServingConfig(models=()), access=AccessLayer.open(reg))
        await service.start()
        try:
            transport = httpx.ASGITransport(app=create_app(service))
            async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
                yield World(client, alpha, admin)
        finally:
            await service.stop()


def _rows(page: str) -> list[str]:
    return [
        f"{ns}/{name}"
        for ns, name in re.findall(r'data-namespace="([^"]+)" data-name="([^"]+)"', page)
    ]


def _link(page: str, rel: str) -> str | None:
    match = re.search(rf'<a href="([^"]+)" id="page-\w+" rel="{rel}">', page)
    return None if match is None else html.unescape(match.group(1))


async def test_pages_follow_each_other_and_together_list_every_visible_model(
    world: World,
) -> None:
    first = await world.page(world.alpha)
    assert first.status_code == 200
    assert len(_rows(first.text)) == PAGE
    assert f"{ALPHA} of {ALPHA} models; 1\u2013{PAGE} shown" in first.text
    assert _link(first.text, "prev") is None
    following = _link(first.text, "next")
    assert following == "/?page=2"
    second = await world.client.get(following, headers={"Authorization": f"Bearer {world.alpha}"})
    assert len(_rows(second.text)) == ALPHA - PAGE
    assert _link(second.text, "next") is None and _link(second.text, "prev") == "/"
    every = _rows(first.text) + _rows(second.text)
    assert every == sorted(every) == [f"alpha/m{i:03d}" for i in range(ALPHA)]
    # An admin sees beta's models too, in the same order: they end the second page.
    admin = await world.page(world.admin, page="2")
    assert _rows(admin.text)[-3:] == ["beta/s0", "beta/s1", "beta/s2"]
    assert f"{ALPHA + 3} of {ALPHA + 3} models" in admin.text


async def test_filters_apply_before_paging_and_stay_in_the_links(world: World) -> None:
    many = await world.page(world.alpha, tag="many", q="number")
    assert _rows(many.text) == MANY[:PAGE]
    assert f"{len(MANY)} of {ALPHA} models" in many.text
    following = _link(many.text, "next")
    assert following is not None
    assert dict(httpx.URL(following).params) == {"q": "number", "tag": "many", "page": "2"}
    rest = await world.client.get(following, headers={"Authorization": f"Bearer {world.alpha}"})
    assert _rows(rest.text) == MANY[PAGE:]
    # One word that only beta's models carry: not a row, not a count, not an option.
    secret = await world.page(world.alpha, q="secret")
    assert _rows(secret.text) == [] and f"0 of {ALPHA} models" in secret.text
    assert "beta" not in (await world.page(world.alpha)).text
    staged = await world.page(world.alpha, alias="staging")
    assert _rows(staged.text) == []
    assert _rows((await world.page(world.admin, alias="staging")).text) == ["beta/s0"]


async def test_a_page_past_the_last_says_so_and_leads_back(world: World) -> None:
    past = await world.page(world.alpha, page="7", tag="few")
    assert past.status_code == 200
    assert _rows(past.text) == []
    assert "Page 7 is past the last page (1)" in past.text
    assert dict(httpx.URL(_link(past.text, "prev") or "").params) == {"tag": "few"}


@pytest.mark.parametrize(
    "number",
    [
        "0",
        "-1",
        "abc",
        "1.5",
        "1e3",
        " ",
        "+2",
        "0x10",
        "\u0661",
        "99999999999999999999999",
        "20001",
    ],
)
async def test_a_hostile_page_number_is_a_clear_400(world: World, number: str) -> None:
    answer = await world.page(world.alpha, page=number)
    if not number.strip():
        assert answer.status_code == 200  # as if not given
        return
    assert answer.status_code == 400, answer.text[:300]
    assert "&#39;page&#39; must be a whole number from 1 to" in answer.text
    assert "Traceback" not in answer.text
