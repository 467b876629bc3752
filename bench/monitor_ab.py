"""What monitoring costs over HTTP, interleaved: sciserve with monitoring off and on, side by side.

    python bench/monitor_ab.py                 # 6 rounds of 5 s per server, c=16 b=1 HTTP-binary
    python bench/monitor_ab.py --rounds 10 --duration 3

``bench/serve.py`` measures one server after the other, so on a shared
machine a change in the background load between the two lands on one of
them.  Here both servers run at once (idle but for the one under load) and
the wrk runs alternate, off, on, on, off, ..., so slow drifts of the
machine's load fall on both alike.  It prints each round's rows/s and the
server's CPU time per request (its process and children, from /proc), and
the median cost of monitoring in both: on a busy machine throughput swings
by tens of percent from run to run, CPU time per request much less.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servebench.inproc import open_session
from servebench.model import IN_FEATURES, INPUT_NAME, OUTPUT_NAME, write_model
from servebench.payloads import make_payloads
from servebench.servers import SERVERS
from servebench.verify import infer_url
from servebench.wrk import WrkRequest, find_wrk, run_wrk


def _server_pid(home: Path) -> int:
    """The pid of the ``sciserve serve`` whose ``--home`` is under ``home``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and any(a.startswith(str(home).encode()) for a in argv):
            return int(proc.name)
    raise SystemExit(f"no sciserve server found for {home}")


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of ``pid`` (its threads; not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--control", action="store_true", help="both servers with monitoring off (an A/A test)"
    )
    args = parser.parse_args()
    wrk = find_wrk()
    if wrk is None:
        sys.exit("wrk is needed: sudo apt-get install -y wrk")
    specs = {spec.key: spec for spec in SERVERS}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        model = write_model(work / "model.onnx")
        inputs = np.random.default_rng(1).standard_normal((1, IN_FEATURES), dtype=np.float32)
        (expected,) = open_session(model).run([OUTPUT_NAME], {INPUT_NAME: inputs})
        payloads = make_payloads(inputs, expected)
        bodies = payloads.write(work / "bodies")
        requests = {}
        pids = {}
        for key in ("sciserve", "sciserve-monitored"):
            spec = specs["sciserve" if args.control else key]
            endpoint = stack.enter_context(spec.launch(work / key, model))
            requests[key] = WrkRequest(
                url=infer_url(endpoint.http),
                body=bodies.binary,
                content_type="application/octet-stream",
                header_length=payloads.http_binary_header_length,
                batch=1,
            )
            pids[key] = _server_pid(work / key)
            run_wrk(wrk, requests[key], args.concurrency, args.warmup)
        costs, cpu_costs = [], []
        print(
            f"{'round':>5} {'off rows/s':>11} {'on rows/s':>10} {'cost':>7}"
            f" {'off CPU µs/req':>15} {'on CPU µs/req':>14} {'cost':>7}"
        )
        for i in range(args.rounds):
            order = ("sciserve", "sciserve-monitored")
            if i % 2:
                order = order[::-1]
            rates, cpu = {}, {}
            for key in order:
                before = _cpu_seconds(pids[key])
                run = run_wrk(wrk, requests[key], args.concurrency, args.duration)
                rates[key] = run.rows_per_s
                cpu[key] = (_cpu_seconds(pids[key]) - before) / max(run.requests, 1) * 1e6
            off, on = rates["sciserve"], rates["sciserve-monitored"]
            costs.append(1 - on / off)
            cpu_costs.append(cpu["sciserve-monitored"] / cpu["sciserve"] - 1)
            print(
                f"{i + 1:>5} {off:>11,.0f} {on:>10,.0f} {costs[-1]:>+7.1%}"
                f" {cpu['sciserve']:>15.0f} {cpu['sciserve-monitored']:>14.0f}"
                f" {cpu_costs[-1]:>+7.1%}"
            )
        print(
            f"monitoring costs {statistics.median(costs):+.1%} of the rows/s (median of "
            f"{len(costs)} interleaved rounds; spread {min(costs):+.1%} .. {max(costs):+.1%})"
        )
        print(
            f"and {statistics.median(cpu_costs):+.1%} more server CPU per request "
            f"(spread {min(cpu_costs):+.1%} .. {max(cpu_costs):+.1%})"
        )


if __name__ == "__main__":
    main()
