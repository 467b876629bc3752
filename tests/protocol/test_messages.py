"""Error texts sent to remote clients carry no path of the server."""

from __future__ import annotations

import pytest

from sciserve.protocol._messages import client_message


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "invalid manifest /srv/sciserve/tmp/unpack-x1/package/sciserve.yaml:\n  - bad",
            "invalid manifest sciserve.yaml:\n  - bad",
        ),
        ("artifact /data/artifacts/ab/abcdef is corrupt", "artifact abcdef is corrupt"),
        ("cannot read '/home/ada/x.tar.gz': denied", "cannot read 'x.tar.gz': denied"),
        ("cannot write (/var/cache/p/) now", "cannot write (p) now"),
    ],
)
def test_absolute_paths_are_cut_to_their_last_component(text: str, shown: str) -> None:
    assert client_message(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "no model alpha/m",
        "no version 1.0 of alpha/m",
        "artifact store s3://bucket/prefix is read-only",
        "1/2 of the inputs/outputs",
        "no slash at all",
    ],
)
def test_everything_else_is_left_alone(text: str) -> None:
    assert client_message(text) == text


def test_an_echoed_name_of_100_kb_is_cut() -> None:
    text = client_message(f"unknown model {'x' * 100_000!r}")
    assert text.startswith("unknown model 'xxx")
    assert "100002 characters" in text
    assert len(text) < 200


def test_words_of_ordinary_length_are_kept() -> None:
    digest = "sha256:" + "a" * 64
    assert client_message(f"{digest} differs") == f"{digest} differs"


def test_the_whole_message_can_be_capped() -> None:
    text = client_message("word " * 1000, max_chars=100)
    assert len(text) == 100
    assert text.endswith("...")
