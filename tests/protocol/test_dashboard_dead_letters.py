"""Reading a job's first dead letters: capped, tolerant of garbage, local only."""

from __future__ import annotations

import json
from pathlib import Path

from sciserve.protocol.dashboard.dead_letters import (
    MAX_FIELD,
    MAX_LETTERS,
    MAX_LINE,
    read_dead_letters,
)


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_the_first_letters_are_read_in_shard_order_and_the_rest_counted_as_more(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "shard-1.dead.jsonl", [json.dumps({"row_id": f"b{i}"}) for i in range(40)])
    _write(tmp_path / "shard-0.dead.jsonl", [json.dumps({"row_id": f"a{i}"}) for i in range(40)])
    _write(tmp_path / "shard-0.parquet.dead", [json.dumps({"row_id": "not a dead-letter file"})])
    found = read_dead_letters(str(tmp_path))
    assert len(found.letters) == MAX_LETTERS and found.more
    assert [d["row_id"] for d in found.letters[:2]] == ["a0", "a1"]
    assert found.letters[40]["row_id"] == "b0"


def test_garbage_is_skipped_and_long_text_cut(tmp_path: Path) -> None:
    lines = [
        "{not json",
        "[1, 2]",
        "x" * (MAX_LINE + 10),
        json.dumps({"row_id": 7, "error": "e" * 5000, "model": None, "extra": "ignored"}),
        "[" * 100_000,
    ]
    _write(tmp_path / "shard-0.dead.jsonl", lines)
    found = read_dead_letters(str(tmp_path))
    assert not found.more and found.unread is None
    [letter] = found.letters
    assert letter["row_id"] == "7" and letter["model"] == ""
    assert len(letter["error"]) == MAX_FIELD and letter["error"].endswith("...")
    assert set(letter) == {"row_id", "shard_id", "stage", "model", "reason", "error"}


def test_what_cannot_be_read_says_why(tmp_path: Path) -> None:
    assert read_dead_letters(None).unread == "the job has no output directory yet"
    remote = read_dead_letters("s3://bucket/job")
    assert remote.letters == [] and "s3://bucket/job" in (remote.unread or "")
    assert read_dead_letters(str(tmp_path / "missing")).letters == []
