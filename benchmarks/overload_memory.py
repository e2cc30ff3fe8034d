"""Overload benchmark: push the server past what it can export and watch its memory stay flat.

    .venv/bin/python benchmarks/overload_memory.py [--duration 30] [--limit-mib N] [--delay-ms 200]

A recording backend that answers every export after `--delay-ms` is far slower than 12 clients
(6 gRPC + 6 OTLP/HTTP, closed loop, ~0.9 MiB requests of 4000 spans), so the rings fill and the
memory limiter must refuse. The hard limit is the server's idle usage + 130 MiB (soft = hard -
80 MiB), measured first on this machine with a server without a limit, unless `--limit-mib` sets
it. Every second it prints the RSS of the whole server tree (supervisor + workers + exporters),
the limiter's own figure (anonymous RSS + ring bytes, what it compares with the limits), whether
it refuses, and the requests acknowledged and refused so far (refused = UNAVAILABLE + RetryInfo /
503 + Retry-After). At the end: the peaks against the limit, and a check that every acknowledged
span reached the backend. Results also go to `benchmarks/results/overload-memory-<UTC>.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.conftest import ServerProcess, wait_until  # noqa: E402
from tests.faults.load import Load  # noqa: E402
from tests.support.backend import RecordingBackend  # noqa: E402
from tests.support.reconcile import Ledger, reconcile  # noqa: E402

MiB = 1024 * 1024
SPANS = 4000
CLIENTS = 6  # per transport
HEADROOM_MIB = 130
SPIKE_MIB = 80


def tree_rss(server: ServerProcess) -> int:
    """Summed RSS of the supervisor and every descendant (what `top` would add up)."""
    total = 0
    root = psutil.Process(server.pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def usage(server: ServerProcess) -> float:
    return server.metrics().value("otlp_memory_usage_bytes")


def idle_usage(workdir: Path, env: dict[str, str]) -> float:
    """The limiter's figure for an idle server on this machine (limit far above it)."""
    with ServerProcess(workdir / "probe", env={**env, "OTLP_MEMORY_LIMIT_MIB": "100000"}) as probe:
        wait_until(lambda: usage(probe) > 0, 10)
        return max(usage(probe) for _ in range(5))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of overload (default 30)")
    parser.add_argument("--limit-mib", type=int, default=0, help="hard limit (default idle + 130 MiB)")
    parser.add_argument("--delay-ms", type=float, default=200.0, help="backend delay per export")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    with (
        tempfile.TemporaryDirectory(prefix="overload-memory-") as tmp,
        RecordingBackend(delay_ms=args.delay_ms) as backend,
    ):
        workdir = Path(tmp)
        env = {"OTLP_ENDPOINT": backend.grpc_endpoint, "OTLP_WORKERS": str(args.workers)}
        idle = idle_usage(workdir, env)
        hard = args.limit_mib or int(idle / MiB) + HEADROOM_MIB
        soft = hard - min(SPIKE_MIB, hard // 2)
        print(
            f"overload: {args.duration:.0f} s, {CLIENTS} gRPC + {CLIENTS} HTTP clients x {SPANS} spans,"
            f" backend delay {args.delay_ms:.0f} ms, {args.workers} workers;"
            f" idle {idle / MiB:.0f} MiB, limit hard {hard} MiB / soft {soft} MiB"
        )
        server = ServerProcess(
            workdir / "server",
            env={**env, "OTLP_MEMORY_LIMIT_MIB": str(hard), "OTLP_MEMORY_SPIKE_LIMIT_MIB": str(hard - soft)},
        ).start()
        ledger = Ledger()
        mix = (("grpc", "traces"),) * CLIENTS + (("http", "traces"),) * CLIENTS
        samples: list[dict[str, float]] = []
        try:
            load = Load(server, ledger, mix=mix, items=SPANS, rate=None, pause=0.02).start()
            start = time.monotonic()
            print(
                f"{'t s':>5} {'tree RSS MiB':>13} {'limiter MiB':>12} {'refusing':>9}"
                f" {'acked':>7} {'refused':>8}"
            )
            while (t := time.monotonic() - start) < args.duration:
                m = server.metrics()
                sample = {
                    "t": round(t, 1),
                    "tree_rss_mib": round(tree_rss(server) / MiB, 1),
                    "usage_mib": round(m.value("otlp_memory_usage_bytes") / MiB, 1),
                    "refusing": m.value("otlp_memory_refusing"),
                    "acked": load.acked(),
                    "refused": sum(len(s.hints) for s in load.stats.values()),
                }
                samples.append(sample)
                print(
                    f"{sample['t']:>5.0f} {sample['tree_rss_mib']:>13.0f} {sample['usage_mib']:>12.0f}"
                    f" {int(sample['refusing']):>9} {sample['acked']:>7} {sample['refused']:>8}"
                )
                load.stop_event.wait(1.0)
            load.finish()
            refused = {
                transport: sum(len(s.hints) for name, s in load.stats.items() if name.startswith(transport))
                for transport in ("grpc", "http")
            }
            m = server.metrics()
            counters = {
                transport: m.value(
                    "otlp_receiver_requests_total", transport=transport, signal="traces", outcome="refused"
                )
                for transport in ("grpc", "http")
            }
            wait_until(
                lambda: reconcile(ledger, backend.records()).lost == 0, 300, 0.5, "the backlog delivered"
            )
            result = reconcile(ledger, backend.records())
        finally:
            code = server.stop(timeout=120)
    peak_rss = max(s["tree_rss_mib"] for s in samples)
    peak_usage = max(s["usage_mib"] for s in samples)
    print(
        f"peak tree RSS {peak_rss:.0f} MiB, peak limiter usage {peak_usage:.0f} MiB"
        f" (soft {soft}, hard {hard} MiB): {'UNDER' if peak_usage < hard else 'OVER'} the hard limit"
    )
    print(
        f"requests acked {result.acked // SPANS}, refused by clients' count {refused},"
        f" by the server's counters {counters}, failed {result.failed // SPANS}, errors {load.errors()}"
    )
    print(f"delivered {result.delivered} spans of {result.acked} acked, lost {result.lost}; exit code {code}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"overload-memory-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(
        json.dumps(
            {
                "settings": vars(args) | {"out": str(args.out), "hard_mib": hard, "soft_mib": soft},
                "idle_mib": round(idle / MiB, 1),
                "peak_tree_rss_mib": peak_rss,
                "peak_usage_mib": peak_usage,
                "refused": refused,
                "reconciliation": result.line("overload-memory"),
                "samples": samples,
            },
            indent=1,
        )
    )
    print(f"results: {out}")
    return 0 if peak_usage < hard and result.lost == 0 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
