"""End-to-end benchmark against a peer: loadgen -> server -> recording backend, on this machine.

    .venv/bin/python benchmarks/run_e2e.py [--quick] [--duration 8s] [--no-peer] [--out benchmarks/results]

Two servers are measured in the same run, one after the other for every workload and with the
same load generator, backend and settings: `otlp_ingest serve` (2 workers, 1 exporter, the
defaults) and the peer, rotel (`rotel-agent` from the `rotel` wheel, a Rust OTLP collector, with
its OTLP exporter pointed at the same backend). Both batch the same way: at most BATCH_ITEMS
(8192) items or 200 ms, rotel's defaults (and the Collector's batch processor's); ours default to
2048 items / 5 s, so the benchmark sets them, and passes rotel's explicitly too. The order of the
two alternates from workload to workload so neither always runs on a warmer machine.

Only the server tree's CPU counts: psutil `cpu_times()` of the root and every live descendant,
plus the root's `children_*` times (children it reaped), from just before the load starts until
the backend holds every accepted span (so export work is included). Memory: a 1 Hz sampler
records the tree's summed PSS and USS (`memory_full_info()`, /proc/<pid>/smaps_rollup): PSS
shares a shared-memory ring page between the worker and the exporter that map it, RSS would count
it twice. Reported: the peak, and the steady figure (median of the second half of the run), which
is what the load itself holds once memory left from the run before (a burst's ring pages, given
back when writes slow down: ring/layout.py) is gone. Idle CPU: the tree's CPU over `--idle`
seconds with no traffic, after warm-up.

Runs per server: gRPC and HTTP/protobuf at 10, 100 and 512 spans per request, closed loop (8
senders, throughput); then, on freshly started trees of both (so the closed-loop bursts' memory
is not counted against a steady load), fixed-rate 10,000 spans/s (100 spans x 100 requests/s)
for ack latency and memory, then idle; and ours once more in durable mode (gRPC 100/req, log on
disk). Every tree is warmed up before its first measured run, and its memory left to settle.
Then the cost of processing (issue 18, processing_cost.py): gRPC 100 spans/request closed loop,
ours with the built-in `attributes` processor and with a `python` processor, rotel with its Python
processor, all doing the same delete + hash on every span, next to both servers unprocessed; each
run's result at the backend is checked (exit 1 if the work was not done).
Results go to `<out>/e2e-<UTC timestamp>.json` and `<out>/latest.md` (both servers' rows, the
ratios and the targets of issues 10 and 18, reported as MET/BELOW, never asserted: the machine is
shared and noisy).
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import processing_cost  # noqa: E402  (benchmarks/, the script's own directory)

from otlp_ingest.loadgen import parse_duration  # noqa: E402
from tests.conftest import ServerProcess  # noqa: E402
from tests.support.backend import RecordingBackend  # noqa: E402
from tests.support.waiting import free_port, wait_until  # noqa: E402

PEER = "rotel"
OURS = "otlp-ingest"
DURABLE_LABEL = " durable"
# Issue 10's targets: spans per CPU-second as a multiple of the peer's, same run.
CPU_RATIO_TARGETS = {("grpc", 10): 0.5, ("grpc", 100): 1.0, ("http", 10): 1.0, ("http", 100): 1.3}
P99_TARGET_MS = 5.0  # at a steady 10,000 spans/s
PSS_TARGET_MIB = 150.0
IDLE_TARGET = 0.01  # of one core
# Both servers batch alike: rotel's defaults (and the Collector batch processor's send_batch_size).
BATCH_ITEMS = 8192
BATCH_TIMEOUT = "200ms"


@dataclass
class RunResult:
    server: str
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
    peak_pss_mib: float
    peak_uss_mib: float
    steady_pss_mib: float  # median PSS over the second half of the run (the load's own memory)
    case: str = ""  # processing_cost.py's case ("" for every other run)
    check: str = ""  # processing runs: "" if the backend saw the case's work done, else what is wrong


class TreeSampler:
    """CPU and memory of a process tree (root + descendants; reaped children via the root's
    children_* times, the only parent in the tree that reaps)."""

    def __init__(self, root_pid: int) -> None:
        self.root = psutil.Process(root_pid)
        self.peak_pss = 0
        self.peak_uss = 0
        self.samples: list[int] = []  # PSS, one a second
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _procs(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self._procs():
            try:
                t = p.cpu_times()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            total += t.user + t.system + t.children_user + t.children_system
        return total

    def memory(self) -> tuple[int, int]:
        """(PSS, USS) summed over the tree, bytes."""
        pss = uss = 0
        for p in self._procs():
            try:
                info = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            pss += info.pss
            uss += info.uss
        return pss, uss

    def start(self) -> None:
        self.peak_pss, self.peak_uss = self.memory()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            pss, uss = self.memory()
            self.samples.append(pss)
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_uss = max(self.peak_uss, uss)

    def steady_pss(self) -> int:
        """Median PSS of the second half of the samples: what the load itself holds, after
        memory left over from whatever ran before (a burst's ring pages) was given back."""
        tail = sorted(self.samples[len(self.samples) // 2 :]) or [self.peak_pss]
        return tail[len(tail) // 2]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        pss, uss = self.memory()
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_uss = max(self.peak_uss, uss)


class Target:
    """A server under test: its endpoints and process tree."""

    name: str
    grpc_endpoint: str
    http_endpoint: str
    pid: int


class OursTarget(Target):
    def __init__(self, server: ServerProcess, name: str = OURS) -> None:
        self.server = server
        self.name = name
        self.grpc_endpoint = server.grpc_endpoint
        self.http_endpoint = server.http_endpoint
        self.pid = server.pid


class RotelTarget(Target):
    """`rotel-agent start` in the foreground on free ports, exporting OTLP/gRPC to `backend`;
    with `trace_processor`, that Python file runs on every ResourceSpans (rotel's processor SDK)."""

    def __init__(
        self, workdir: Path, backend_endpoint: str, name: str = PEER, trace_processor: Path | None = None
    ) -> None:
        from rotel.agent import Agent  # the benchmark environment installs the `rotel` wheel

        self.name = name
        grpc_port, http_port = free_port(), free_port()
        self.grpc_endpoint = f"127.0.0.1:{grpc_port}"
        self.http_endpoint = f"127.0.0.1:{http_port}"
        self.log = open(workdir / "rotel.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                str(Agent.agent_path),
                "start",
                "--otlp-grpc-endpoint", self.grpc_endpoint,
                "--otlp-http-endpoint", self.http_endpoint,
                "--exporter", "otlp",
                "--otlp-exporter-endpoint", f"http://{backend_endpoint}",
                "--batch-max-size", str(BATCH_ITEMS),
                "--batch-timeout", BATCH_TIMEOUT,
                "--pid-file", str(workdir / "rotel.pid"),
                "--log-file", str(workdir / "rotel-agent.log"),
                *(["--otlp-with-trace-processor", str(trace_processor)] if trace_processor else []),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.pid = self.proc.pid
        wait_until(lambda: _port_open(grpc_port) and _port_open(http_port), 15, 0.05, "rotel to listen")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    @staticmethod
    def version() -> str:
        from rotel import __about__

        return getattr(__about__, "__version__", "?")


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


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


def one_run(
    target: Target,
    backend: RecordingBackend,
    protocol: str,
    spans: int,
    duration: float,
    concurrency: int,
    rate_spans: float | None = None,
    label: str = "",
    case: str = "",
) -> RunResult:
    backend.reset()
    sampler = TreeSampler(target.pid)
    endpoint = target.grpc_endpoint if protocol == "grpc" else target.http_endpoint
    argv = ["--protocol", protocol, "--endpoint", endpoint, "--items-per-request", str(spans)]
    argv += ["--concurrency", str(concurrency), "--duration", f"{duration}s"]
    if rate_spans:
        argv += ["--rate", str(rate_spans / spans)]
    cpu0 = sampler.cpu_seconds()
    sampler.start()
    wall0 = time.perf_counter()
    result = run_loadgen_process(argv, timeout=duration + 60)
    accepted = result["items_accepted"]
    # Count the server's CPU until the backend holds everything it accepted (export included).
    wait_until(lambda: backend.counts()["traces"] >= accepted, 60.0, 0.05, "the export to finish")
    cpu = sampler.cpu_seconds() - cpu0
    wall = time.perf_counter() - wall0
    sampler.stop()
    delivered = backend.counts()["traces"]
    if delivered != accepted:
        _explain_mismatch(backend, target.name, accepted, delivered)
    name = f"{protocol} {spans}/req " + (f"rate {rate_spans:,.0f} spans/s" if rate_spans else "closed loop")
    return RunResult(
        server=target.name,
        name=name + label,
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
        peak_pss_mib=round(sampler.peak_pss / 2**20, 1),
        peak_uss_mib=round(sampler.peak_uss / 2**20, 1),
        steady_pss_mib=round(sampler.steady_pss() / 2**20, 1),
        case=case,
    )


def _explain_mismatch(backend: RecordingBackend, server: str, accepted: int, delivered: int) -> None:
    """Delivered != accepted: print whether the extra items are duplicates of this run's items
    or items of another run (the loadgen's keys start with a per-run id), to tell a duplicate
    delivery from a late one."""
    keys = backend.records()["traces"]["keys"]
    duplicates = sum(n - 1 for n in keys.values() if n > 1)
    by_run: dict[str, int] = {}
    for key, n in keys.items():
        by_run[key[:16]] = by_run.get(key[:16], 0) + n
    print(
        f"  {server}: accepted {accepted:,} but delivered {delivered:,}: {duplicates:,} duplicate"
        f" deliveries; items per run id: {sorted(by_run.values(), reverse=True)[:5]}",
        flush=True,
    )


def idle_cpu(target: Target, seconds: float) -> float:
    """The tree's CPU seconds per wall second with no traffic (1.0 = one core)."""
    sampler = TreeSampler(target.pid)
    cpu0, wall0 = sampler.cpu_seconds(), time.perf_counter()
    time.sleep(seconds)
    return (sampler.cpu_seconds() - cpu0) / (time.perf_counter() - wall0)


def warm_up(target: Target, backend: RecordingBackend, protocols: tuple[str, ...] = ("grpc", "http")) -> None:
    """First connections, imports, page faults: not part of any measured run. The backend is
    reset before each phase too: items left from an earlier run would satisfy the wait below
    at once, and this phase's items would then arrive during the next one."""
    for protocol in protocols:
        backend.reset()
        endpoint = target.grpc_endpoint if protocol == "grpc" else target.http_endpoint
        result = run_loadgen_process(
            ["--protocol", protocol, "--endpoint", endpoint, "--duration", "1s", "--concurrency", "2"], 60
        )

        def exported(accepted: int = result["items_accepted"]) -> bool:
            return backend.counts()["traces"] >= accepted

        wait_until(exported, 60, 0.05, "warm-up export")
        backend.reset()


def settle_memory(target: Target, timeout: float = 30.0) -> None:
    """Wait until the tree's PSS stops falling (two samples a second apart within 1 MiB): the
    ring pages a warm-up burst touched are given back over a few seconds (ring/layout.py,
    "Memory follows the load"), and a run's peak should be its own load's, not the warm-up's."""
    sampler = TreeSampler(target.pid)
    deadline = time.monotonic() + timeout
    before = sampler.memory()[0]
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = sampler.memory()[0]
        if before - now < 2**20:
            return
        before = now


def processing_runs(
    closed: list[Target],
    backend: RecordingBackend,
    workdir: Path,
    env: dict[str, str],
    duration: float,
    concurrency: int,
    no_peer: bool,
) -> list[RunResult]:
    """processing_cost.py's cases, each checked at the backend. The unprocessed cases run on
    `closed`, the closed-loop trees; each processing case on a tree of its own, started, warmed
    up (gRPC) and stopped around its run, so no more than one extra tree is up at a time."""
    pc = processing_cost
    by_name = {target.name: target for target in closed}
    results = []
    for case in pc.CASES:
        if no_peer and case in (pc.ROTEL_BASE, pc.ROTEL_PYTHON):
            continue
        with ExitStack() as stack:
            if case in (pc.OURS_BASE, pc.ROTEL_BASE):
                target = by_name[OURS if case == pc.OURS_BASE else PEER]
            elif case == pc.ROTEL_PYTHON:
                where = workdir / "rotel-python"
                where.mkdir(parents=True, exist_ok=True)
                peer = RotelTarget(where, backend.grpc_endpoint, case, trace_processor=pc.ROTEL_PROCESSOR)
                stack.callback(peer.stop)
                target = peer
            else:
                where = workdir / case.replace(" ", "-")
                where.mkdir(parents=True, exist_ok=True)
                config = where / "processing.yaml"
                config.write_text(pc.config_yaml(case))
                server = stack.enter_context(ServerProcess(where, env=env, args=["--config", str(config)]))
                target = OursTarget(server, name=case)
            if target not in closed:
                warm_up(target, backend, ("grpc",))
            r = one_run(
                target, backend, pc.PROTOCOL, pc.SPANS, duration, concurrency, label=pc.LABEL, case=case
            )
        r.server = case
        r.check = pc.check_sample(case, backend.first_request("traces"))
        results.append(r)
        _print(r)
        if r.check:
            print(f"  CHECK FAILED for {case}: {r.check}", flush=True)
    return results


def processing_report(results: list[RunResult]) -> dict:
    cases = {
        r.case: {
            "spans_per_s": r.spans_per_s,
            "spans_per_cpu_s": r.spans_per_cpu_s,
            "requests_refused": r.requests_refused,
            "check": r.check,
        }
        for r in results
        if r.case
    }
    return processing_cost.report(cases)


def _pair(results: list[RunResult], name: str) -> tuple[RunResult | None, RunResult | None]:
    ours = next((r for r in results if r.server == OURS and r.name == name), None)
    peer = next((r for r in results if r.server == PEER and r.name == name), None)
    return ours, peer


def targets_report(results: list[RunResult], idle: dict[str, float]) -> list[tuple[str, str, bool]]:
    """(what, measured, met) for each target of issue 10."""
    out = []
    for (protocol, spans), target in CPU_RATIO_TARGETS.items():
        ours, peer = _pair(results, f"{protocol} {spans}/req closed loop")
        if ours and peer and peer.spans_per_cpu_s:
            ratio = ours.spans_per_cpu_s / peer.spans_per_cpu_s
            what = f"{protocol} {spans}/req spans per CPU-s >= {target}x {PEER}"
            out.append((what, f"{ratio:.2f}x", ratio >= target))
    ours, peer = _pair(results, "grpc 512/req closed loop")
    if ours and peer and peer.spans_per_cpu_s:
        ratio = ours.spans_per_cpu_s / peer.spans_per_cpu_s
        out.append((f"grpc 512/req spans per CPU-s > 1x {PEER} (kept)", f"{ratio:.2f}x", ratio > 1.0))
    for r in results:
        if r.server == OURS and r.mode == "rate":
            what = f"{r.name}: p99 ack latency < {P99_TARGET_MS} ms"
            out.append((what, f"{r.p99_ms:.2f} ms", r.p99_ms < P99_TARGET_MS))
        if r.server == OURS and r.mode == "rate":
            out.append(
                (
                    f"{r.name}: tree PSS under that load <= {PSS_TARGET_MIB:.0f} MiB",
                    f"{r.peak_pss_mib:.0f} MiB peak, {r.steady_pss_mib:.0f} MiB steady",
                    r.peak_pss_mib <= PSS_TARGET_MIB,  # a fresh tree: its peak is this load's
                )
            )
    if OURS in idle:
        what = f"idle CPU of the tree < {IDLE_TARGET:.0%} of a core"
        out.append((what, f"{idle[OURS]:.2%}", idle[OURS] < IDLE_TARGET))
    return out  # fmt: skip


def to_markdown(
    meta: dict, results: list[RunResult], idle: dict[str, float], processing: dict | None = None
) -> str:
    lines = [
        f"# End-to-end benchmark ({meta['timestamp']})",
        "",
        f"Machine: {meta['cpus']} CPUs, {meta['platform']}, Python {meta['python']}.",
        f"{OURS}: {meta['server']}. {PEER}: {meta['peer']}.",
        f"Load average at the start: {meta['loadavg_start']}.",
        "loadgen -> server -> recording backend, each in its own process(es); only the server tree's CPU",
        "counts (until the backend held every accepted span). Memory is the tree's summed PSS (USS).",
        "",
        f"| run | {OURS} spans/s | {OURS} spans/CPU-s | {PEER} spans/s | {PEER} spans/CPU-s"
        " | CPU ratio | throughput ratio | p99 ms (ours / peer) | peak PSS MiB (ours / peer) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = list(dict.fromkeys(r.name for r in results if not r.case))
    for name in names:
        ours, peer = _pair(results, name)
        if ours is None:
            continue
        if peer is None:
            lines.append(
                f"| {name} | {ours.spans_per_s:,.0f} | {ours.spans_per_cpu_s:,.0f} | | | | |"
                f" {ours.p99_ms:.2f} | {ours.peak_pss_mib:.0f} |"
            )
            continue
        cpu_ratio = ours.spans_per_cpu_s / peer.spans_per_cpu_s if peer.spans_per_cpu_s else 0.0
        tput_ratio = ours.spans_per_s / peer.spans_per_s if peer.spans_per_s else 0.0
        lines.append(
            f"| {name} | {ours.spans_per_s:,.0f} | {ours.spans_per_cpu_s:,.0f} | {peer.spans_per_s:,.0f}"
            f" | {peer.spans_per_cpu_s:,.0f} | **{cpu_ratio:.2f}x** | {tput_ratio:.2f}x"
            f" | {ours.p99_ms:.2f} / {peer.p99_ms:.2f} | {ours.peak_pss_mib:.0f} / {peer.peak_pss_mib:.0f} |"
        )
    if idle:
        shown = ", ".join(f"{name} {value:.2%} of a core" for name, value in idle.items())
        lines += ["", f"Idle CPU of the tree ({meta['idle_s']:.0f} s, no traffic): {shown}."]
    lines += ["", "Every run, accepted / delivered (must be equal) and refused / failed requests:", ""]
    for r in results:
        lines.append(
            f"- {r.server} {r.name}: {r.spans_accepted:,} / {r.spans_delivered:,}, "
            f"{r.requests_refused} / {r.requests_failed};"
            f" p50/p95/p99 {r.p50_ms:.2f}/{r.p95_ms:.2f}/{r.p99_ms:.2f} ms; CPU util {r.server_cpu_util:.2f};"
            f" PSS peak {r.peak_pss_mib:.0f} MiB (USS {r.peak_uss_mib:.0f}), steady {r.steady_pss_mib:.0f}"
        )
    shm, _ = _pair(results, "grpc 100/req closed loop")
    durable = next((r for r in results if r.name.endswith(DURABLE_LABEL)), None)
    if shm and durable and shm.spans_per_cpu_s:
        lines += [
            "",
            f"Durable mode (OTLP_QUEUE_DIR on disk, group-commit fsync) vs shared-memory mode, gRPC 100/req"
            f" closed loop, same run: {durable.spans_per_cpu_s:,.0f} vs {shm.spans_per_cpu_s:,.0f} spans per"
            f" server CPU-s ({durable.spans_per_cpu_s / shm.spans_per_cpu_s:.0%}), {durable.spans_per_s:,.0f}"
            f" vs {shm.spans_per_s:,.0f} spans/s, p99 {durable.p99_ms:.2f} vs {shm.p99_ms:.2f} ms.",
        ]
    lines += ["", "Targets (issue 10; reported, not asserted):", ""]
    for what, measured, met in targets_report(results, idle):
        lines.append(f"- {'MET' if met else 'BELOW'}: {what} (measured {measured})")
    if processing and processing["cases"]:
        lines += processing_cost.markdown(processing)
    return "\n".join(lines) + "\n"


def _print(r: RunResult) -> None:
    print(
        f"{r.server:22s} {r.name:36s} {r.spans_per_s:>10,.0f} spans/s {r.spans_per_cpu_s:>10,.0f} spans/CPU-s"
        f"  p99 {r.p99_ms:7.2f} ms  PSS {r.peak_pss_mib:.0f} MiB",
        flush=True,
    )


@contextmanager
def started_targets(
    workdir: Path, env: dict[str, str], backend: RecordingBackend, no_peer: bool
) -> Iterator[tuple[ServerProcess, list[Target]]]:
    """Our server (and the peer unless `no_peer`), started in `workdir` and warmed up; both
    stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    with ServerProcess(workdir, env=env) as server:
        targets: list[Target] = [OursTarget(server)]
        peer = None if no_peer else RotelTarget(workdir, backend.grpc_endpoint)
        try:
            if peer is not None:
                targets.append(peer)
            for target in targets:
                warm_up(target, backend)
                settle_memory(target)
            yield server, targets
        finally:
            if peer is not None:
                peer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=parse_duration, default=8.0, help="per closed-loop run (8s)")
    parser.add_argument("--latency-duration", type=parse_duration, default=10.0, help="per fixed-rate run")
    parser.add_argument("--idle", type=parse_duration, default=10.0, help="idle CPU window (10s)")
    parser.add_argument("--concurrency", type=int, default=8, help="loadgen senders, closed loop")
    parser.add_argument("--workers", type=int, default=2, help="OTLP_WORKERS (default 2)")
    parser.add_argument("--quick", action="store_true", help="2 s runs at 10 and 100 spans only (smoke test)")
    parser.add_argument("--no-peer", action="store_true", help="measure otlp-ingest only")
    parser.add_argument("--no-durable", action="store_true", help="skip the durable-mode run")
    parser.add_argument(
        "--no-processing", action="store_true", help="skip the processing runs (issue 18, processing_cost.py)"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    sizes = (10, 100) if args.quick else (10, 100, 512)
    duration = 2.0 if args.quick else args.duration
    latency_duration = 3.0 if args.quick else args.latency_duration
    idle_s = 3.0 if args.quick else args.idle
    loadavg_start = " ".join(f"{x:.2f}" for x in os.getloadavg())  # others' load skews the figures
    timestamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    workdir = Path(tempfile.mkdtemp(prefix="otlp-e2e-bench-"))
    results: list[RunResult] = []
    idle: dict[str, float] = {}
    env = {"OTLP_BATCH_SIZE": str(BATCH_ITEMS), "OTLP_BATCH_TIMEOUT": BATCH_TIMEOUT}
    env |= {"OTLP_LOG_LEVEL": "warning", "OTLP_QUEUE_BYTES": "64MiB"}
    env["OTLP_WORKERS"] = str(args.workers)
    workers = 0.0
    try:
        with RecordingBackend() as backend:
            env["OTLP_ENDPOINT"] = backend.grpc_endpoint
            # Closed loop: throughput and CPU per span.
            with started_targets(workdir / "closed", env, backend, args.no_peer) as (server, targets):
                turn = 0
                for protocol in ("grpc", "http"):
                    for spans in sizes:
                        order = targets if turn % 2 == 0 else targets[::-1]
                        turn += 1
                        for target in order:
                            r = one_run(target, backend, protocol, spans, duration, args.concurrency)
                            results.append(r)
                            _print(r)
                if not args.no_processing:
                    # The cost of processing (issue 18), the unprocessed cases on these same trees.
                    where, began = workdir / "processing", time.monotonic()
                    results += processing_runs(
                        targets, backend, where, env, duration, args.concurrency, args.no_peer
                    )
                    print(f"processing runs: {time.monotonic() - began:.0f} s", flush=True)
            # Fixed rate and idle on fresh trees: the memory and CPU a steady load and no load
            # hold, not what the closed-loop bursts before them left (ring pages, rotel's heap).
            with started_targets(workdir / "rate", env, backend, args.no_peer) as (server, targets):
                for protocol in ("grpc", "http"):
                    for target in targets:
                        r = one_run(target, backend, protocol, 100, latency_duration, 4, rate_spans=10_000)
                        results.append(r)
                        _print(r)
                for target in targets:
                    idle[target.name] = idle_cpu(target, idle_s)
                    print(f"{target.name:12s} idle CPU {idle[target.name]:.2%} of a core", flush=True)
                workers = server.metrics().value("otlp_process_up", role="worker")
            if not args.no_durable:
                # The same gRPC 100/req closed loop in durable mode, on a log in the work dir (on
                # disk, not tmpfs, or the fsyncs would cost nothing), so one run compares the modes.
                durable = workdir / "durable"
                durable_env = {**env, "OTLP_QUEUE_DIR": str(durable / "queue")}
                with started_targets(durable, durable_env, backend, no_peer=True) as (_, (target,)):
                    r = one_run(target, backend, "grpc", 100, duration, args.concurrency, label=DURABLE_LABEL)
                    results.append(r)
                    _print(r)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    meta = {
        "timestamp": timestamp,
        "cpus": psutil.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "server": f"{int(workers)} workers, 1 exporter, gRPC export to the recording backend,"
        f" batches of {BATCH_ITEMS} items / {BATCH_TIMEOUT}",
        "peer": "none"
        if args.no_peer
        else f"rotel {RotelTarget.version()}, OTLP/gRPC export, batches of {BATCH_ITEMS} items"
        f" / {BATCH_TIMEOUT}",
        "loadavg_start": loadavg_start,
        "duration_s": duration,
        "latency_duration_s": latency_duration,
        "idle_s": idle_s,
        "loadgen_concurrency": args.concurrency,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    processing = processing_report(results)
    payload = {
        "meta": meta,
        "runs": [asdict(r) for r in results],
        "idle_cpu": idle,
        "targets": targets_report(results, idle),
        "processing": processing,
    }
    (args.out / f"e2e-{timestamp}.json").write_text(json.dumps(payload, indent=2) + "\n")
    markdown = to_markdown(meta, results, idle, processing)
    (args.out / "latest.md").write_text(markdown)
    print()
    print(markdown)
    print(f"written: {args.out / f'e2e-{timestamp}.json'} and {args.out / 'latest.md'}")
    if processing["checks_failed"]:
        print(f"processing checks FAILED (the work was not done): {processing['checks_failed']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
