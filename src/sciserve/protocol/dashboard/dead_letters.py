"""The first dead letters of a batch job, for its page.

A job's workers write one ``shard-N.dead.jsonl`` per shard into the job's
output directory (:func:`sciserve.batch.worker.paths`), one JSON object per
row that could not be annotated.  Their text comes from the input data and
from models, so the page shows it only as escaped text; reading is capped
(letters, bytes per line, bytes in all) so a huge or garbled file costs
little.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = ["DeadLetters", "read_dead_letters"]

#: The dead-letter files of a job's output directory.
PATTERN: Final = "shard-*.dead.jsonl"
#: Fields a page shows, in order.
FIELDS: Final = ("row_id", "shard_id", "stage", "model", "reason", "error")
MAX_LETTERS: Final = 50
MAX_LINE: Final = 16 * 1024
MAX_BYTES: Final = 1 << 20
MAX_FIELD: Final = 500


@dataclass(frozen=True)
class DeadLetters:
    """Up to :data:`MAX_LETTERS` letters; ``more`` when others were left unread,
    ``unread`` says why none could be read (a remote output, say)."""

    letters: list[dict[str, str]] = field(default_factory=list)
    more: bool = False
    unread: str | None = None


def read_dead_letters(out_dir: str | None) -> DeadLetters:
    """The first dead letters under ``out_dir``, a job's output directory."""
    if not out_dir:
        return DeadLetters(unread="the job has no output directory yet")
    if "://" in out_dir and not out_dir.startswith("file://"):
        return DeadLetters(unread=f"they are in {out_dir}, which this server does not read")
    root = Path(out_dir.removeprefix("file://"))
    try:
        files = sorted(root.glob(PATTERN)) if root.is_dir() else []
    except OSError as exc:
        return DeadLetters(unread=f"the output directory cannot be read: {exc.strerror}")
    letters: list[dict[str, str]] = []
    budget = MAX_BYTES
    for path in files:
        try:
            with path.open("rb") as source:
                while budget > 0:
                    line = source.readline(MAX_LINE + 1)
                    if not line:
                        break
                    budget -= len(line)
                    letter = _letter(line)
                    if letter is None:
                        continue
                    if len(letters) == MAX_LETTERS:
                        return DeadLetters(letters, more=True)
                    letters.append(letter)
        except OSError:
            continue  # being rewritten by a re-run: the next look sees it
        if budget <= 0:
            return DeadLetters(letters, more=True)
    return DeadLetters(letters)


def _letter(line: bytes) -> dict[str, str] | None:
    if len(line) > MAX_LINE:
        return None
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    return {key: _text(doc.get(key)) for key in FIELDS}


def _text(value: object) -> str:
    text = "" if value is None else value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= MAX_FIELD else text[: MAX_FIELD - 3] + "..."
