"""End-to-end benchmark: loadgen -> `otlp_ingest serve` -> recording backend, on this machine.

    .venv/bin/python benchmarks/run_e2e.py [--quick] [--duration 8s] [--out benchmarks/results]

Three processes (trees): the load generator (`python -m otlp_ingest loadgen --json`, one process
per run), the server tree (supervisor + workers + exporters) and the recording backend. Only the
server tree's CPU counts: psutil `cpu_times()` of the supervisor and every live child, plus the
supervisor's `children_user/children_system` (children it reaped), sampled before the run and
after every accepted span was delivered to the backend (so export work is included).
Peak RSS is the largest sum of the tree's RSS seen by a 5 Hz sampler during the run.

Runs: gRPC and HTTP/protobuf at 10, 100 and 512 spans per request, closed loop (throughput), and
fixed-rate 10,000 spans/s (100 spans x 100 requests/s) for ack latency. Results go to
`<out>/e2e-<UTC timestamp>.json` and `<out>/latest.md`, and are printed. Floors from the brief
are reported, not asserted (this machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from otlp_ingest.loadgen import parse_duration  # noqa: E402
from tests.conftest import ServerProcess, wait_until  # noqa: E402
from tests.support.backend import RecordingBackend  # noqa: E402

FLOOR_SPANS_PER_CPU_S = 200_000  # at 100 spans per gRPC request
FLOOR_SPANS_PER_S = 100_000
FLOOR_P99_MS_AT_10K = 10.0
DURABLE_LABEL = " durable"


@dataclass
class RunResult:
    name: str
    protocol: str
    spans_per_request: int
    mode: str  # "closed" | "rate"
    rate_spans_per_s: float | None
    spans_sent: int
    spans_accepted: int
    spans_delivered: int
    requests_refused: int
    requests_failed: int
    elapsed_s: float
    spans_per_s: float
    server_cpu_s: float
    spans_per_cpu_s: float
    server_cpu_util: float  # server CPU seconds per wall second (2.0 = both cores)
    p50_ms: float
    p95_ms: float
    p99_ms: float
    peak_rss_mib: float


class TreeSampler:
    """CPU and RSS of a process tree (root + descendants, reaped children included via
    children_* times of the root, the only parent in the tree that reaps)."""

    def __init__(self, root_pid: int) -> None:
        self.root = psutil.Process(root_pid)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _procs(self) -> list[psutil.Process]:
        return [self.root, *self.root.children(recursive=True)]

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self._procs():
            try:
                t = p.cpu_times()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            total += t.user + t.system + t.children_user + t.children_system
        return total

    def rss(self) -> int:
        total = 0
        for p in self._procs():
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        return total

    def start(self) -> None:
        self.peak_rss = self.rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_rss = max(self.peak_rss, self.rss())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def run_loadgen_process(argv: list[str], timeout: float) -> dict:
    """`python -m otlp_ingest loadgen ... --json` in its own process; its JSON result."""
    proc = subprocess.run(
        [sys.executable, "-m", "otlp_ingest", "loadgen", *argv, "--json"],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    lines = proc.stdout.decode().strip().splitlines()
    if not lines:
        raise RuntimeError(
            f"loadgen printed nothing (exit {proc.returncode}): {proc.stderr.decode()[-2000:]}"
        )
    return json.loads(lines[-1])


def wait_drained(server: ServerProcess) -> None:
    """Until the exporters sent every span the receivers accepted."""

    def drained() -> bool:
        m = server.metrics()
        return m.value("otlp_exporter_sent_spans_total") >= m.value("otlp_receiver_accepted_spans_total")

    wait_until(drained, 60.0, 0.05, "the exporter to catch up")


def one_run(
    server: ServerProcess,
    backend: RecordingBackend,
    protocol: str,
    spans: int,
    duration: float,
    concurrency: int,
    rate_spans: float | None = None,
    label: str = "",
) -> RunResult:
    backend.reset()
    sampler = TreeSampler(server.pid)
    endpoint = server.grpc_endpoint if protocol == "grpc" else server.http_endpoint
    argv = ["--protocol", protocol, "--endpoint", endpoint, "--items-per-request", str(spans)]
    argv += ["--concurrency", str(concurrency), "--duration", f"{duration}s"]
    if rate_spans:
        argv += ["--rate", str(rate_spans / spans)]
    cpu0 = sampler.cpu_seconds()
    sampler.start()
    wall0 = time.perf_counter()
    result = run_loadgen_process(argv, timeout=duration + 60)

    wait_drained(server)  # count the server's CPU until everything it accepted was exported
    cpu = sampler.cpu_seconds() - cpu0
    wall = time.perf_counter() - wall0
    sampler.stop()
    delivered = backend.records()["traces"]["items"]
    accepted = result["items_accepted"]
    name = f"{protocol} {spans}/req " + (f"rate {rate_spans:,.0f} spans/s" if rate_spans else "closed loop")
    name += label
    return RunResult(
        name=name,
        protocol=protocol,
        spans_per_request=spans,
        mode="rate" if rate_spans else "closed",
        rate_spans_per_s=rate_spans,
        spans_sent=result["items_sent"],
        spans_accepted=accepted,
        spans_delivered=delivered,
        requests_refused=result["requests_refused"],
        requests_failed=result["requests_failed"],
        elapsed_s=result["elapsed_s"],
        spans_per_s=result["items_per_s"],
        server_cpu_s=round(cpu, 3),
        spans_per_cpu_s=round(accepted / cpu, 1) if cpu > 0 else 0.0,
        server_cpu_util=round(cpu / wall, 2) if wall > 0 else 0.0,
        p50_ms=result["latency_p50_ms"],
        p95_ms=result["latency_p95_ms"],
        p99_ms=result["latency_p99_ms"],
        peak_rss_mib=round(sampler.peak_rss / 2**20, 1),
    )


def floors(results: list[RunResult]) -> list[tuple[str, str, bool]]:
    """(what, measured, met) for each floor in the brief."""
    out = []
    grpc100 = next(
        (r for r in results if r.protocol == "grpc" and r.spans_per_request == 100 and r.mode == "closed"),
        None,
    )
    if grpc100:
        out.append(
            (f"gRPC 100/req spans per server CPU-s >= {FLOOR_SPANS_PER_CPU_S:,}",
             f"{grpc100.spans_per_cpu_s:,.0f}", grpc100.spans_per_cpu_s >= FLOOR_SPANS_PER_CPU_S)
        )  # fmt: skip
        out.append(
            (f"gRPC 100/req spans/s >= {FLOOR_SPANS_PER_S:,}", f"{grpc100.spans_per_s:,.0f}",
             grpc100.spans_per_s >= FLOOR_SPANS_PER_S)
        )  # fmt: skip
    for r in results:
        if r.mode == "rate":
            out.append((f"{r.name}: p99 ack latency < {FLOOR_P99_MS_AT_10K} ms", f"{r.p99_ms:.2f} ms",
                        r.p99_ms < FLOOR_P99_MS_AT_10K))  # fmt: skip
    return out


def to_markdown(meta: dict, results: list[RunResult]) -> str:
    lines = [
        f"# End-to-end benchmark ({meta['timestamp']})",
        "",
        f"Machine: {meta['cpus']} CPUs, {meta['platform']}, Python {meta['python']}.",
        f"Server: {meta['server']}. Load average at the start: {meta['loadavg_start']}.",
        "loadgen -> `otlp_ingest serve` -> recording backend, each in its own process(es); only the server",
        "tree's CPU counts (supervisor + workers + exporters, until every accepted span was exported).",
        "",
        "| run | spans/s | spans per server CPU-s | server CPU util | p50 ms | p95 ms | p99 ms | peak RSS MiB"
        " | accepted | delivered | refused/failed req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.spans_per_s:,.0f} | {r.spans_per_cpu_s:,.0f} | {r.server_cpu_util:.2f}"
            f" | {r.p50_ms:.2f} | {r.p95_ms:.2f} | {r.p99_ms:.2f} | {r.peak_rss_mib:.0f}"
            f" | {r.spans_accepted:,} | {r.spans_delivered:,} | {r.requests_refused}/{r.requests_failed} |"
        )
    shm = next((r for r in results if r.name == "grpc 100/req closed loop"), None)
    durable = next((r for r in results if r.name.endswith(DURABLE_LABEL)), None)
    if shm and durable and shm.spans_per_cpu_s:
        lines += [
            "",
            f"Durable mode (OTLP_QUEUE_DIR on disk, group-commit fsync) vs shared-memory mode, gRPC 100/req"
            f" closed loop, same run: {durable.spans_per_cpu_s:,.0f} vs {shm.spans_per_cpu_s:,.0f} spans per"
            f" server CPU-s ({durable.spans_per_cpu_s / shm.spans_per_cpu_s:.0%}), {durable.spans_per_s:,.0f}"
            f" vs {shm.spans_per_s:,.0f} spans/s, p99 {durable.p99_ms:.2f} vs {shm.p99_ms:.2f} ms.",
        ]
    lines += ["", "Floors (reported, not asserted):", ""]
    for what, measured, met in floors(results):
        lines.append(f"- {'MET' if met else 'BELOW'}: {what} (measured {measured})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=parse_duration, default=8.0, help="per closed-loop run (8s)")
    parser.add_argument("--latency-duration", type=parse_duration, default=10.0, help="per fixed-rate run")
    parser.add_argument("--concurrency", type=int, default=8, help="loadgen senders, closed loop")
    parser.add_argument("--workers", type=int, default=0, help="OTLP_WORKERS (0 = usable CPUs)")
    parser.add_argument("--quick", action="store_true", help="2 s runs, gRPC/HTTP at 100 only (smoke test)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    sizes = (100,) if args.quick else (10, 100, 512)
    duration = 2.0 if args.quick else args.duration
    latency_duration = 3.0 if args.quick else args.latency_duration
    loadavg_start = " ".join(f"{x:.2f}" for x in os.getloadavg())  # others' load skews the figures
    timestamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    workdir = Path(tempfile.mkdtemp(prefix="otlp-e2e-bench-"))
    results: list[RunResult] = []
    env = {"OTLP_BATCH_TIMEOUT": "200ms", "OTLP_LOG_LEVEL": "warning", "OTLP_QUEUE_BYTES": "64MiB"}
    env["OTLP_WORKERS"] = str(args.workers) if args.workers else "0"
    try:
        with RecordingBackend() as backend:
            env["OTLP_ENDPOINT"] = backend.grpc_endpoint
            server = ServerProcess(workdir, env=env)
            with server:
                # Warm-up: first connections, imports, page faults of the rings.
                run_loadgen_process(
                    ["--endpoint", server.grpc_endpoint, "--duration", "1s", "--concurrency", "2"], 60
                )
                wait_drained(server)
                for protocol in ("grpc", "http"):
                    for spans in sizes:
                        r = one_run(server, backend, protocol, spans, duration, args.concurrency)
                        results.append(r)
                        print(f"{r.name:40s} {r.spans_per_s:>10,.0f} spans/s {r.spans_per_cpu_s:>10,.0f}"
                              f" spans/CPU-s  p99 {r.p99_ms:7.2f} ms  rss {r.peak_rss_mib:.0f} MiB",
                              flush=True)  # fmt: skip
                for protocol in ("grpc", "http"):
                    r = one_run(server, backend, protocol, 100, latency_duration, 4, rate_spans=10_000)
                    results.append(r)
                    print(f"{r.name:40s} p50 {r.p50_ms:.2f} ms  p95 {r.p95_ms:.2f} ms  p99 {r.p99_ms:.2f} ms"
                          f"  {r.spans_per_cpu_s:,.0f} spans/CPU-s", flush=True)  # fmt: skip
                workers = server.metrics().value("otlp_process_up", role="worker")
            # The same gRPC 100/req closed loop in durable mode, on a log in the work dir (on disk,
            # not tmpfs, or the fsyncs would cost nothing), so one run compares the two modes.
            durable_server = ServerProcess(
                workdir / "durable", env={**env, "OTLP_QUEUE_DIR": str(workdir / "durable" / "queue")}
            )
            with durable_server:
                run_loadgen_process(
                    ["--endpoint", durable_server.grpc_endpoint, "--duration", "1s", "--concurrency", "2"], 60
                )
                wait_drained(durable_server)
                r = one_run(
                    durable_server, backend, "grpc", 100, duration, args.concurrency, label=DURABLE_LABEL
                )
                results.append(r)
                print(f"{r.name:40s} {r.spans_per_s:>10,.0f} spans/s {r.spans_per_cpu_s:>10,.0f}"
                      f" spans/CPU-s  p99 {r.p99_ms:7.2f} ms  rss {r.peak_rss_mib:.0f} MiB",
                      flush=True)  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    meta = {
        "timestamp": timestamp,
        "cpus": psutil.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "server": f"{int(workers)} workers, 1 exporter, gRPC export to the recording backend,"
        " batch timeout 200ms",
        "loadavg_start": loadavg_start,
        "duration_s": duration,
        "latency_duration_s": latency_duration,
        "loadgen_concurrency": args.concurrency,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "runs": [asdict(r) for r in results], "floors": floors(results)}
    (args.out / f"e2e-{timestamp}.json").write_text(json.dumps(payload, indent=2) + "\n")
    markdown = to_markdown(meta, results)
    (args.out / "latest.md").write_text(markdown)
    print()
    print(markdown)
    print(f"written: {args.out / f'e2e-{timestamp}.json'} and {args.out / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
