"""A pipeline's worker processes die with it, even when it is killed with SIGKILL,
and a SIGTERM to the whole process group drains the pipeline instead of killing them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from sciserve.examples.features import FEATURE_NAMES

from helpers.packages import make_onnx_package
from helpers.server import run_cli

pytestmark = pytest.mark.slow


def _gone(process: psutil.Process) -> bool:
    # Reparented orphans may linger as zombies where nothing reaps them:
    # those no longer run and hold no memory.
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _command(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def test_killed_pipeline_takes_its_workers_and_resource_tracker_along(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
    kafka_group: str,
) -> None:
    home = tmp_path / "home"
    package = make_onnx_package(tmp_path / "pkg", name="lc", n_in=len(FEATURE_NAMES))
    published = run_cli(home, "publish", str(package))
    assert published.returncode == 0, published.stderr
    # An empty topic: the pipeline runs, waiting for alerts, until killed.
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: orphans\nsource: kafka://{kafka_bootstrap}/{kafka_topic()}?group={kafka_group}\n"
        "codec: lsst\nmodels:\n  - ref: lc\nsinks: [results]\n"
        f"dead_letter: file://{tmp_path / 'dead.jsonl'}\nworkers: 2\n"
    )
    log = tmp_path / "pipeline.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sciserve", "--home", str(home), "stream", "run", str(spec)],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    family: list[psutil.Process] = []
    try:
        pipeline = psutil.Process(proc.pid)
        status = home / "streams" / f"orphans.{proc.pid}.json"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            if status.is_file() and json.loads(status.read_text())["state"] == "running":
                break
            time.sleep(0.05)
        family = pipeline.children(recursive=True)
        commands = [_command(p) for p in family]
        assert sum("spawn_main" in c for c in commands) == 2, commands
        assert any("resource_tracker" in c for c in commands), commands

        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while not all(_gone(p) for p in family):
            left = [_command(p) for p in family if not _gone(p)]
            assert time.monotonic() < deadline, f"still running after the pipeline died: {left}"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for process in family:  # nothing outlives the test, whatever happened
            if not _gone(process):
                process.kill()


def test_a_sigterm_to_the_process_group_drains_instead_of_breaking_the_workers(
    tmp_path: Path,
    kafka_bootstrap: str,
    kafka_topic: Callable[..., str],
    kafka_group: str,
) -> None:
    # A service manager stops a unit by signalling its whole process group:
    # the workers get the SIGTERM too, and must outlive it until the
    # pipeline has drained and shut its pool down.
    home = tmp_path / "home"
    package = make_onnx_package(tmp_path / "pkg", name="lc", n_in=len(FEATURE_NAMES))
    published = run_cli(home, "publish", str(package))
    assert published.returncode == 0, published.stderr
    topic = kafka_topic()
    sent = run_cli(
        home, "alerts", "simulate", "--count", "3000", "--to", f"kafka://{kafka_bootstrap}/{topic}"
    )
    assert sent.returncode == 0, sent.stderr
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: grouped\nsource: kafka://{kafka_bootstrap}/{topic}?group={kafka_group}\n"
        "codec: lsst\nmodels:\n  - ref: lc\nsinks: [results]\n"
        f"dead_letter: file://{tmp_path / 'dead.jsonl'}\nworkers: 2\n"
    )
    log = tmp_path / "pipeline.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sciserve", "--home", str(home), "stream", "run", str(spec)],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        status = home / "streams" / f"grouped.{proc.pid}.json"
        deadline = time.monotonic() + 120
        # Mid-stream: batches are being prepared by the workers.
        while not (status.is_file() and json.loads(status.read_text())["annotated"] > 0):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        final = json.loads(status.read_text())
        assert final["state"] == "stopped"
        assert final["annotated"] + final["dead_lettered"] == final["consumed"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
