"""What the admin port's status page costs under load (issue 9): the same load with and without a
status page open.

    .venv/bin/python benchmarks/admin_cost.py [--rounds 3] [--duration 6s] [--poll-hz 1]

One server (2 workers, gRPC export to the recording backend), gRPC 100 spans/request closed loop
(8 senders). Rounds alternate "no poller" and "poller": a thread that fetches `/status.json`
`--poll-hz` times a second, as the page does while a browser shows it (plus `/` once a round, as a
browser loads it once). For each round: spans/s, the tree's CPU per 1,000 spans, the supervisor's
own CPU (it answers the admin port) and the CPU per status request. Medians are printed; compare
the two rows of one run only (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_e2e import OursTarget, TreeSampler, run_loadgen_process, warm_up

from otlp_ingest.loadgen import parse_duration
from tests.conftest import ServerProcess
from tests.support.backend import RecordingBackend
from tests.support.waiting import wait_until


class StatusPoller:
    """Fetches /status.json at a fixed rate in a thread, like the page's refresh loop."""

    def __init__(self, admin_url: str, hz: float) -> None:
        self.url = admin_url
        self.interval = 1.0 / hz
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _fetch(self, path: str) -> None:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            response.read()
        self.requests += 1

    def _run(self) -> None:
        self._fetch("/")
        while not self._stop.wait(self.interval):
            self._fetch("/status.json")

    def __enter__(self) -> StatusPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def one_round(
    server: ServerProcess, backend: RecordingBackend, duration: float, poll_hz: float | None
) -> dict:
    backend.reset()
    tree = TreeSampler(server.pid)
    supervisor = psutil.Process(server.pid)
    argv = ["--protocol", "grpc", "--endpoint", server.grpc_endpoint, "--items-per-request", "100"]
    argv += ["--concurrency", "8", "--duration", f"{duration}s"]
    poller = StatusPoller(f"http://127.0.0.1:{server.admin_port}", poll_hz) if poll_hz else None
    sup0 = supervisor.cpu_times()
    tree0 = tree.cpu_seconds()
    if poller is not None:
        poller.__enter__()
    try:
        result = run_loadgen_process(argv, timeout=duration + 60)
    finally:
        if poller is not None:
            poller.__exit__()
    accepted = result["items_accepted"]
    wait_until(lambda: backend.counts()["traces"] >= accepted, 60.0, 0.05, "the export to finish")
    sup1 = supervisor.cpu_times()
    supervisor_cpu = (sup1.user + sup1.system) - (sup0.user + sup0.system)
    tree_cpu = tree.cpu_seconds() - tree0
    return {
        "spans_per_s": result["items_per_s"],
        "tree_cpu_ms_per_1k_spans": 1000 * tree_cpu / accepted * 1000,
        "supervisor_cpu_s": supervisor_cpu,
        "supervisor_util": supervisor_cpu / result["elapsed_s"],
        "status_requests": poller.requests if poller else 0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=parse_duration, default=6.0)
    parser.add_argument("--poll-hz", type=float, default=1.0, help="status.json fetches per second (1)")
    args = parser.parse_args(argv)
    rows: dict[str, list[dict]] = {"no status page": [], f"status page, {args.poll_hz:g} Hz": []}
    with RecordingBackend() as backend, tempfile.TemporaryDirectory(prefix="otlp-admin-cost-") as tmp:
        env = {"OTLP_ENDPOINT": backend.grpc_endpoint, "OTLP_LOG_LEVEL": "warning"}
        env["OTLP_QUEUE_BYTES"] = "64MiB"
        with ServerProcess(Path(tmp), env=env) as server:
            warm_up(OursTarget(server), backend)
            for _ in range(args.rounds):
                for label, hz in zip(rows, (None, args.poll_hz), strict=True):
                    rows[label].append(one_round(server, backend, args.duration, hz))
    print(f"gRPC 100 spans/request, 8 senders, {args.rounds} alternating rounds of {args.duration:g} s:")
    header = ("spans/s", "tree CPU ms/1k spans", "supervisor CPU", "per status req")
    print(f"{'median':24s} {header[0]:>10s} {header[1]:>21s} {header[2]:>15s} {header[3]:>15s}")
    for label, runs in rows.items():
        spans = statistics.median(r["spans_per_s"] for r in runs)
        per_k = statistics.median(r["tree_cpu_ms_per_1k_spans"] for r in runs)
        util = statistics.median(r["supervisor_util"] for r in runs)
        per_req = ""
        if runs[0]["status_requests"]:
            base = statistics.median(r["supervisor_cpu_s"] for r in rows["no status page"])
            extra = statistics.median(r["supervisor_cpu_s"] for r in runs) - base
            requests = statistics.median(r["status_requests"] for r in runs)
            per_req = f"{1000 * extra / requests:.2f} ms"
        print(f"{label:24s} {spans:>10,.0f} {per_k:>21.3f} {util:>14.2%} {per_req:>15s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
