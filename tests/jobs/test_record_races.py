"""Job records under concurrent writers on a real PostgreSQL: a move made by
another transaction while one is under way is seen, never overwritten."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from sciserve.config import Settings
from sciserve.errors import Conflict
from sciserve.jobs import JobState, JobStore
from sciserve.jobs.records import jobs_table


@pytest.mark.postgres
def test_a_cancel_racing_a_finish_does_not_undo_it(postgres_url: str, tmp_path: Path) -> None:
    settings = Settings.load(tmp_path / "home", environ={}, database_url=postgres_url)
    engine = sa.create_engine(postgres_url)
    outcome: dict[str, object] = {}
    try:
        with JobStore.open(settings) as store:
            job = store.submit("name: x\n", namespace="default", submitter="tester")
            assert store.claim("runner") is not None

            def cancel() -> None:
                try:
                    outcome["record"] = store.cancel(job.id, by="tester")
                except Conflict as exc:
                    outcome["error"] = exc

            with engine.connect() as runner:
                finishing = runner.begin()
                # The runner's finish, not committed yet: the cancel reads
                # RUNNING and then waits for the row.
                runner.execute(
                    jobs_table.update()
                    .where(jobs_table.c.id == job.id)
                    .values(state=JobState.SUCCEEDED.value)
                )
                thread = threading.Thread(target=cancel)
                thread.start()
                deadline = time.monotonic() + 30
                with engine.connect() as observer:
                    waiting = sa.text("select count(*) from pg_locks where not granted")
                    while not observer.execute(waiting).scalar():
                        assert time.monotonic() < deadline, "the cancel never waited"
                        time.sleep(0.02)
                finishing.commit()
                thread.join(30)
                assert not thread.is_alive()
            assert "record" not in outcome
            assert "already finished (SUCCEEDED)" in str(outcome["error"])
            assert store.get(job.id).state is JobState.SUCCEEDED
    finally:
        engine.dispose()
