"""No alert lost, none annotated twice: pipeline workers killed on real brokers.

On NATS JetStream and on a Kafka-protocol broker, a worker is killed with
SIGKILL mid-stream several times, one is stopped with SIGTERM (it must drain
and exit 0), and two workers share the stream while one of them is killed.
Afterwards the result store holds exactly one annotation per valid alert
(the id set equals the simulator's truth table) and every malformed message
is in the dead-letter sink.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sciserve.config import Settings
from sciserve.streams.base import OutRecord, open_sink
from sciserve.streams.results import ResultStore
from sciserve.streams.simulate import AlertSimulator

from helpers.server import run_cli

N_ALERTS = 2500
#: Malformed messages: not Avro framing, broken Avro, an unknown schema id
#: and a real alert cut short.
BAD = [
    b"garbage",
    b"\x00\x00\x00\x04\x4d" + b"x" * 10,
    b"\x00\x00\x00\x27\x0f" + b"\x00" * 40,
    next(AlertSimulator(seed=5, first_id=5 * 10**8).alerts(1)).payload[:1000],
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("faults") / "home"
    done = subprocess.run(
        [sys.executable, "-m", "sciserve", "--home", str(home), "--json", "up", "--no-serve"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return home


def _alerts(first_id: int) -> tuple[list[OutRecord], set[int]]:
    """The stream to send: simulated alerts with the malformed ones mixed in.

    Each test gets its own alert ids: the result store keeps one annotation
    per alert and model version, whichever pipeline wrote it first.
    """
    records: list[OutRecord] = []
    ids: set[int] = set()
    simulator = AlertSimulator(seed=11, first_id=first_id)
    for i, alert in enumerate(simulator.alerts(N_ALERTS)):
        records.append(OutRecord(alert.payload, key=str(alert.alert_id).encode()))
        ids.add(alert.alert_id)
        if i % 800 == 400:
            records.append(OutRecord(BAD[len(records) % len(BAD)]))
    records += [OutRecord(value) for value in BAD]
    return records, ids


def _produce(url: str, records: list[OutRecord]) -> None:
    async def send() -> None:
        sink = open_sink(url)
        await sink.start()
        for start in range(0, len(records), 250):
            await sink.write(records[start : start + 250])
        await sink.close()

    asyncio.run(send())


def _worker(home: Path, spec: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "sciserve", "--home", str(home), "stream", "run", str(spec)],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


def _count(home: Path, pipeline: str) -> int:
    with ResultStore.open(Settings.load(home, environ={})) as store:
        return store.count(pipeline=pipeline)


def _kill(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGKILL) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    return proc.wait(timeout=60)


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(home, *args, timeout=60)


def _dead_values(path: Path) -> set[bytes]:
    if not path.exists():
        return set()
    return {
        base64.b64decode(json.loads(line)["value_b64"]) for line in path.read_text().splitlines()
    }


def _exercise(home: Path, spec: Path, pipeline: str, ids: set[int], tmp_path: Path) -> None:
    log = tmp_path / "workers.log"
    dead = tmp_path / "dead.jsonl"
    started: list[subprocess.Popen[bytes]] = []

    def spawn() -> subprocess.Popen[bytes]:
        started.append(_worker(home, spec, log))
        return started[-1]

    def until(done: Callable[[], bool], *alive: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 90
        while not done():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            for proc in alive:
                assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.1)

    def progress(*alive: subprocess.Popen[bytes], step: int = 150) -> None:
        # Wait until the workers have annotated ``step`` more alerts, so each
        # kill lands mid-stream, whatever the start-up and rebalance times.
        target = _count(home, pipeline) + step
        until(lambda: _count(home, pipeline) >= target, *alive)

    counts = []
    try:
        # Several kill -9, each at a later point of the stream.
        for _ in range(3):
            worker = spawn()
            progress(worker)
            _kill(worker)
            counts.append(_count(home, pipeline))
        # SIGTERM: finish the batch in hand, commit, exit cleanly.
        worker = spawn()
        progress(worker)
        assert _kill(worker, signal.SIGTERM) == 0, log.read_text()[-3000:]
        counts.append(_count(home, pipeline))
        status = json.loads(_cli(home, "--json", "stream", "status", pipeline).stdout)
        assert [w["state"] for w in status].count("stale") == 3
        assert [w["state"] for w in status].count("stopped") == 1
        # Two workers share the stream; one of them is killed.
        first, second = spawn(), spawn()
        progress(first, second)
        _kill(first)
        until(lambda: _count(home, pipeline) >= len(ids), second)
        until(lambda: _dead_values(dead) >= set(BAD), second)
        # ``stream stop`` asks the live worker to drain; it exits cleanly.
        stop = _cli(home, "stream", "stop", pipeline)
        assert stop.returncode == 0, stop.stderr
        assert second.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        for proc in started:  # nothing outlives the test, whatever happened
            if proc.poll() is None:
                _kill(proc)
    # The kills landed mid-stream: progress was partial before the end.
    assert min(counts) > 0 and max(counts) < len(ids), counts
    with ResultStore.open(Settings.load(home, environ={})) as store:
        stored = store.alert_ids(pipeline=pipeline)
    assert len(stored) == len(set(stored)) == len(ids)
    assert set(stored) == ids
    assert _dead_values(dead) == set(BAD)


def _spec(tmp_path: Path, name: str, source: str) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: {name}\nsource: {source}\ncodec: lsst\n"
        "models:\n  - ref: examples/lc-classifier@production\n"
        f"sinks: [results]\ndead_letter: file://{tmp_path / 'dead.jsonl'}\nbatch: 100\n"
    )
    return spec


def test_nats_jetstream(
    home: Path,
    nats_url: str,
    nats_stream: tuple[str, str],
    tmp_path: Path,
) -> None:
    records, ids = _alerts(first_id=1)
    stream, subject = nats_stream
    host = nats_url.removeprefix("nats://")
    _produce(f"nats://{host}/{subject}?stream={stream}", records)
    # A killed worker's unacknowledged alerts come back after ack_wait.
    source = f"nats://{host}/{subject}?stream={stream}&durable=faults&ack_wait=4"
    _exercise(home, _spec(tmp_path, "faults-nats", source), "faults-nats", ids, tmp_path)


def test_kafka(
    home: Path,
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
    kafka_group: str,
    tmp_path: Path,
) -> None:
    records, ids = _alerts(first_id=10**8)
    topic = kafka_topic(partitions=2)
    _produce(f"kafka://{kafka_bootstrap}/{topic}", records)
    # A killed member's partitions move on after its session times out.
    source = f"kafka://{kafka_bootstrap}/{topic}?group={kafka_group}&session_timeout_ms=2000"
    _exercise(home, _spec(tmp_path, "faults-kafka", source), "faults-kafka", ids, tmp_path)
