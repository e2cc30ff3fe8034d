"""`python -m otlp_ingest capacity`: how many pods a given peak needs, and the HPA settings for it.

    replicas = ceil(peak / per_pod x safety)

`per_pod` is one pod's sustainable throughput in items (spans) per second. Either the operator
gives it (`--per-pod`, e.g. from a load test in the target cluster) or `--measure` measures it on
this machine: it starts a server (or targets `--endpoint`) and drives it with the built-in load
generator (`otlp_ingest.loadgen.run_loadgen`) for `--duration`. The safety factor (1.5-2.0) keeps
pods below saturation at peak, leaves room for a zone or a rolling update to take pods away, and
matches the HPA's 70 % CPU target (1 / 0.7 ~ 1.43).

The arithmetic lives in `plan_capacity` (pure, unit-tested); `main` only parses, measures, prints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass

# HPA defaults shipped in deploy/k8s/base/hpa.yaml; keep in step.
HPA_MIN_REPLICAS = 3  # one per zone; the PodDisruptionBudget keeps 2 of them during node drains
HPA_CPU_TARGET_PERCENT = 70
HPA_MEMORY_TARGET_PERCENT = 80
POD_CPU_LIMIT = 2.0  # deploy/k8s/base/deployment.yaml: resources.limits.cpu


@dataclass(frozen=True, slots=True)
class CapacityPlan:
    """Result of the sizing arithmetic. All rates are items per second."""

    peak: float
    per_pod: float
    safety: float
    replicas: int  # ceil(peak / per_pod x safety)
    min_replicas: int
    max_replicas: int
    target_cpu_percent: int = HPA_CPU_TARGET_PERCENT
    target_memory_percent: int = HPA_MEMORY_TARGET_PERCENT

    def formula(self) -> str:
        raw = self.peak / self.per_pod * self.safety
        return (
            f"replicas = ceil(peak / per_pod x safety) = ceil({self.peak:g} / {self.per_pod:g} x "
            f"{self.safety:g}) = ceil({raw:.3f}) = {self.replicas}"
        )


def plan_capacity(
    peak: float, per_pod: float, safety: float = 1.5, min_replicas: int = HPA_MIN_REPLICAS
) -> CapacityPlan:
    """Size a deployment for `peak` items/s given one pod sustains `per_pod` items/s.

    maxReplicas is the replicas the peak needs (never below minReplicas); minReplicas is the
    floor that keeps one pod per zone, capped so it never exceeds maxReplicas.
    """
    if peak <= 0:
        raise ValueError(f"--peak must be > 0 items/s, got {peak:g}")
    if per_pod <= 0:
        raise ValueError(f"--per-pod must be > 0 items/s, got {per_pod:g}")
    if safety < 1.0:
        raise ValueError(f"--safety must be >= 1.0 (1.5-2.0 recommended), got {safety:g}")
    if min_replicas < 1:
        raise ValueError(f"--min-replicas must be >= 1, got {min_replicas}")
    # Round away float noise first: 3000/1000*1.5 must be 4.5 -> 5, and 2000/1000*1.5 exactly 3.
    replicas = max(1, math.ceil(round(peak / per_pod * safety, 9)))
    max_replicas = max(replicas, min_replicas)
    return CapacityPlan(peak, per_pod, safety, replicas, min_replicas, max_replicas)


def parse_duration(text: str) -> float:
    """`10s`, `500ms`, `2m` or plain seconds -> seconds."""
    text = text.strip()
    number, scale = text, 1.0
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix):
            number, scale = text[: -len(suffix)], factor
            break
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 10s, 500ms, 1m)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"duration must be > 0: {text!r}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="otlp-ingest capacity",
        description="Size an HPA-scaled deployment: replicas = ceil(peak / per_pod x safety).",
    )
    p.add_argument("--peak", type=float, required=True, help="peak load in spans (items) per second")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--per-pod", type=float, help="one pod's sustainable throughput, items/s")
    src.add_argument(
        "--measure", action="store_true", help="measure one pod's throughput with the built-in loadgen"
    )
    p.add_argument("--safety", type=float, default=1.5, help="safety factor, 1.5-2.0 (default 1.5)")
    p.add_argument("--min-replicas", type=int, default=HPA_MIN_REPLICAS, help="HPA floor (default 3)")
    p.add_argument("--duration", type=parse_duration, default=10.0, help="measurement length (10s)")
    p.add_argument(
        "--endpoint",
        help="with --measure: measure this running server (host:port; gRPC unless --protocol) "
        "instead of starting one",
    )
    p.add_argument("--protocol", default="grpc", choices=("grpc", "http", "http/json"))
    p.add_argument("--concurrency", type=int, default=8, help="loadgen concurrent senders (8)")
    p.add_argument("--items-per-request", type=int, default=100, help="spans per request (100)")
    p.add_argument(
        "--workers",
        type=int,
        default=int(POD_CPU_LIMIT),
        help="receiver workers of the started server (default 2: a pod's CPU limit)",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return p


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        pause.wait(0.1)
    raise RuntimeError(f"server not ready at {url} within {timeout:g}s")


@contextlib.contextmanager
def _local_server(workers: int, protocol: str) -> Iterator[str]:
    """Start `python -m otlp_ingest serve` on free ports with a temporary data dir (file sink)."""
    grpc_port, http_port, admin_port = _free_port(), _free_port(), _free_port()
    with tempfile.TemporaryDirectory(prefix="otlp-capacity-") as data_dir:
        env = dict(os.environ)
        env.update(
            OTLP_BIND="127.0.0.1",
            OTLP_GRPC_PORT=str(grpc_port),
            OTLP_HTTP_PORT=str(http_port),
            OTLP_ADMIN_PORT=str(admin_port),
            OTLP_DATA_DIR=data_dir,
            OTLP_WORKERS=str(workers),
            OTLP_LOG_LEVEL="warning",
        )
        env.pop("OTLP_ENDPOINT", None)  # measure the ingest path into the file sink
        proc = subprocess.Popen([sys.executable, "-m", "otlp_ingest", "serve"], env=env)
        try:
            _wait_ready(f"http://127.0.0.1:{admin_port}/ready", proc, timeout=60.0)
            port = grpc_port if protocol == "grpc" else http_port
            yield f"127.0.0.1:{port}" if protocol == "grpc" else f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def measure_per_pod(args: argparse.Namespace) -> float:
    """Run the load generator closed-loop and return accepted items per second."""
    from otlp_ingest.loadgen import LoadgenOptions, run_loadgen  # heavy (grpc); only when measuring

    def run(endpoint: str) -> float:
        result = run_loadgen(
            LoadgenOptions(
                signal="traces",
                protocol=args.protocol,
                endpoint=endpoint,
                items_per_request=args.items_per_request,
                concurrency=args.concurrency,
                rate=None,
                duration=args.duration,
            )
        )
        print(
            f"measured: {result.requests_ok}/{result.requests_sent} requests ok, "
            f"{result.requests_refused} refused, {result.requests_failed} failed, "
            f"{result.items_accepted} spans in {result.elapsed_s:.1f}s, "
            f"p99 ack {result.latency_p99_ms:.1f} ms",
            file=sys.stderr,
        )
        if result.items_accepted <= 0 or result.elapsed_s <= 0:
            raise RuntimeError("no spans were accepted during the measurement")
        return result.items_accepted / result.elapsed_s

    if args.endpoint:
        return run(args.endpoint)
    with _local_server(args.workers, args.protocol) as endpoint:
        return run(endpoint)


def render(plan: CapacityPlan, measured_on: str | None) -> str:
    lines = [
        f"peak:      {plan.peak:g} spans/s",
        f"per pod:   {plan.per_pod:g} spans/s" + (f" ({measured_on})" if measured_on else ""),
        f"safety:    {plan.safety:g}",
        plan.formula(),
        "",
        "HorizontalPodAutoscaler (deploy/k8s/base/hpa.yaml):",
        f"  minReplicas: {plan.min_replicas}",
        f"  maxReplicas: {plan.max_replicas}",
        f"  cpu averageUtilization: {plan.target_cpu_percent}",
        f"  memory averageUtilization: {plan.target_memory_percent}",
    ]
    if not 1.5 <= plan.safety <= 2.0:
        lines.append(f"note: safety {plan.safety:g} is outside the recommended 1.5-2.0")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m otlp_ingest capacity`; returns the process exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    measured_on = None
    try:
        if args.measure:
            try:
                per_pod = measure_per_pod(args)
            except Exception as exc:  # a measurement that fails in any way is one clear line
                raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc
            cpus = len(os.sched_getaffinity(0))
            measured_on = (
                f"measured on this machine, {cpus} CPUs; a pod is limited to {POD_CPU_LIMIT:g} CPUs"
                + (f", target {args.endpoint}" if args.endpoint else "")
            )
        else:
            per_pod = args.per_pod
        plan = plan_capacity(args.peak, per_pod, args.safety, args.min_replicas)
    except ValueError as exc:
        print(f"capacity: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:
        print(f"capacity: measurement failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(plan) | {"formula": plan.formula(), "measured_on": measured_on}))
    else:
        print(render(plan, measured_on))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
