"""`python -m otlp_ingest top`: the admin status page in a terminal, for hosts without a browser.

Reads `/status.json` from a running server's admin port (supervisor/status.py; fields in
docs/operations.md) and prints the same sections as the page: throughput per signal with a
last-minute sparkline, exporters, queues, processes, the memory limiter and recent warnings.
It redraws in place every `--interval` with plain ANSI escapes (cursor home, clear to end), no
curses; `--once` prints one frame and exits (scripts, tests, `watch`). Colours and redrawing are
used only when stdout is a terminal (and not with `--no-color` or NO_COLOR).

Exit status: 0 (Ctrl-C ends the refreshing view), 1 when `--once` cannot read the status, 2 on a
usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from typing import Any

SPARK = "▁▂▃▄▅▆▇█"
RESET, BOLD, DIM, RED, GREEN, YELLOW = "\x1b[0m", "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[32m", "\x1b[33m"
_STATE_COLOURS = {
    "ready": GREEN,
    "running": GREEN,
    "sending": GREEN,
    "accepting": GREEN,
    "idle": DIM,
    "off": DIM,
    "starting": YELLOW,
    "draining": YELLOW,
    "WARNING": YELLOW,
    "retrying": RED,
    "down": RED,
    "refusing": RED,
    "refusing_hard": RED,
    "ERROR": RED,
    "CRITICAL": RED,
    "NOT READY": RED,
}


# --- formatting (the page's rules: thousands separators, binary byte units, short durations) ---


def fmt_int(n: float | None) -> str:
    return "-" if n is None else f"{round(n):,}"


def fmt_rate(r: float | None) -> str:
    if r is None:
        return "-"
    return (f"{r:,.1f}" if 0 < r < 10 else f"{round(r):,}") + "/s"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while b >= 1024 and i < len(units) - 1:
        b /= 1024
        i += 1
    return f"{round(b):,} B" if i == 0 else f"{b:,.1f} {units[i]}"


def fmt_dur(s: float | None) -> str:
    if s is None:
        return "-"
    s = max(0.0, s)
    if s < 1:
        return f"{round(s * 1000)} ms"
    if s < 60:
        return f"{s:.1f} s"
    m, h = int(s // 60), int(s // 3600)
    d = h // 24
    if d:
        return f"{d}d {h % 24}h"
    if h:
        return f"{h}h {m % 60}m"
    return f"{m}m {int(s % 60)}s"


def fmt_pct(p: float | None) -> str:
    return "-" if p is None else f"{p:.1f}%"


def sparkline(values: list[float], width: int = 30) -> str:
    """The last `width` values as block characters, scaled to their maximum."""
    values = values[-width:]
    top = max(values, default=0.0)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] for v in values)


def fill_bar(fraction: float | None, width: int = 10) -> str:
    if fraction is None:
        return ""
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + " " * (width - filled) + "]"


class _Painter:
    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def __call__(self, text: str, code: str) -> str:
        return f"{code}{text}{RESET}" if self.colour and code else text

    def state(self, text: str) -> str:
        return self(text, _STATE_COLOURS.get(text, ""))


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """Columns padded to their widest cell; `right` holds the indexes of right-aligned ones.
    Cells may carry ANSI colour codes: widths count visible characters only."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], _visible_len(cell))

    def line(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            pad = " " * (widths[i] - _visible_len(cell))
            out.append(pad + cell if i in right else cell + pad)
        return "  ".join(out).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _visible_len(text: str) -> int:
    n, i = 0, 0
    while i < len(text):
        if text[i] == "\x1b":
            end = text.find("m", i)
            i = len(text) if end < 0 else end + 1
            continue
        n += 1
        i += 1
    return n


def render(doc: dict[str, Any], colour: bool = False) -> list[str]:
    """One frame of `top` for a /status.json document, as lines."""
    paint = _Painter(colour)
    now = doc.get("time") or time.time()
    lines: list[str] = []
    sup = next((p for p in doc.get("processes", []) if p.get("role") == "supervisor"), {})
    dest = doc.get("destination") or {}
    where = (
        f"-> {dest.get('endpoint')} ({dest.get('protocol')})"
        if dest.get("kind") == "backend"
        else f"-> files in {dest.get('directory')}"
        if dest
        else ""
    )
    ready = (
        paint.state("ready")
        if doc.get("ready")
        else paint.state("NOT READY") + f" ({doc.get('ready_reason')})"
    )
    lines.append(
        "  ".join(
            x
            for x in (
                paint(f"otlp-ingest {doc.get('version', '')}", BOLD),
                str(doc.get("host", "")),
                ready,
                f"{doc.get('mode')} queue" if doc.get("mode") else "",
                where,
                f"up {fmt_dur(sup.get('uptime_s'))}",
                time.strftime("%H:%M:%S", time.localtime(now)),
            )
            if x
        )
    )

    lines += ["", paint(f"THROUGHPUT (rates over {doc.get('rate_window_s', 5):g} s)", BOLD)]
    rows = []
    for name, g in doc.get("signals", {}).items():
        rows.append(
            [
                f"{name} ({g.get('items', '')})",
                fmt_rate(g["accepted"]["rate"]),
                fmt_int(g["accepted"]["total"]),
                fmt_rate(g["refused"]["rate"]),
                fmt_int(g["refused"]["total"]),
                fmt_rate(g["exported"]["rate"]),
                fmt_int(g["exported"]["total"]),
                fmt_int(g["dropped"]["total"]),
                sparkline(g.get("history", {}).get("accepted", [])),
            ]
        )
    headers = ["signal", "accepted", "total", "refused", "total", "exported", "total", "dropped"]
    lines += _table([*headers, "last minute (accepted)"], rows, set(range(1, 8)))

    processors = doc.get("processors") or []
    if processors:  # only when the config has pipelines (docs/processing.md)
        lines += ["", paint("PROCESSORS (per signal, in pipeline order)", BOLD)]
        rows = [
            [
                p["signal"],
                f"{p['position'] + 1}. {p['name']}",
                fmt_rate(p.get("incoming_rate")),
                fmt_int(p["incoming"]),
                fmt_int(p["outgoing"]),
                fmt_int(p["dropped"]),
                fmt_int(p["errors"]),
                fmt_dur(p["seconds"]),
            ]
            for p in processors
        ]
        headers = ["signal", "processor", "in rate", "in", "out", "dropped", "errors", "time spent"]
        lines += _table(headers, rows, set(range(2, 8)))

    lines += ["", paint("EXPORTERS", BOLD)]
    rows = []
    for e in doc.get("exporters", []):
        state = e.get("state", "?")
        detail = []
        if state == "retrying" and e.get("retrying"):
            r = e["retrying"]
            since = r.get("since") or now
            detail.append(
                f"{fmt_int(r.get('failures'))} failures in a row for {fmt_dur(now - since)}, "
                f"backoff {fmt_dur(r.get('backoff_s'))}"
            )
        err = e.get("last_error")
        if err:
            detail.append(f"last error {fmt_dur(now - err['time'])} ago: {err['message']}")
        lat = e.get("latency") or {}
        rows.append(
            [
                e.get("name", ""),
                str(e.get("pid") or "-"),
                paint.state(state),
                f"{fmt_dur(lat.get('p50_s'))} / {fmt_dur(lat.get('p99_s'))}" if lat.get("samples") else "-",
                f"{e['in_flight']} / {e['window']} of {e['window_limit']}" if "window" in e else "-",
                "; ".join(detail),
            ]
        )
    lines += _table(["exporter", "pid", "state", "p50 / p99", "in flight/window", "detail"], rows, {1, 3, 4})

    lines += ["", paint("QUEUES", BOLD)]
    rows = []
    for q in doc.get("queues", []):
        rows.append(
            [
                f"{'log' if q.get('kind') == 'wal' else 'ring'} {q.get('queue')}",
                "earlier run" if q.get("worker") is None else f"worker[{q['worker']}]",
                f"exporter[{q.get('exporter')}]",
                f"{fmt_int(q.get('records'))} / {fmt_int(q.get('max_records'))}",
                f"{fmt_bytes(q.get('bytes'))} / {fmt_bytes(q.get('capacity_bytes'))}",
                f"{fill_bar(q.get('fill'))} {fmt_pct(None if q.get('fill') is None else q['fill'] * 100)}",
            ]
        )
    lines += _table(["queue", "writer", "reader", "records", "bytes", "fill"], rows, {3, 4})

    lines += ["", paint("PROCESSES", BOLD)]
    rows = []
    for p in doc.get("processes", []):
        last = p.get("last_exit")
        rows.append(
            [
                p.get("name", ""),
                str(p.get("pid") or "-"),
                paint.state(p.get("state", "?")),
                fmt_dur(p.get("uptime_s")),
                "" if p.get("restarts") is None else fmt_int(p["restarts"]),
                f"{last['how']}, {fmt_dur(now - last['time'])} ago" if last else "",
                fmt_pct(p.get("cpu_percent")),
                fmt_bytes(p.get("rss_bytes")),
            ]
        )
    lines += _table(
        ["process", "pid", "state", "uptime", "restarts", "last exit", "cpu", "memory"], rows, {1, 3, 4, 6, 7}
    )

    m = doc.get("memory") or {}
    if m.get("enabled"):
        memory = (
            f"{paint.state(m['state'])}  {fill_bar(m['usage_bytes'] / max(1, m['hard_limit_bytes']))} "
            f"{fmt_bytes(m['usage_bytes'])} used, refuses above {fmt_bytes(m['soft_limit_bytes'])}, "
            f"hard {fmt_bytes(m['hard_limit_bytes'])}, tripped {fmt_int(m['trips'])} times"
        )
    else:
        memory = f"{paint.state('off')} (no memory limit)"
    lines += ["", paint("MEMORY LIMITER", BOLD) + "  " + memory]

    lines += ["", paint("RECENT WARNINGS (newest first)", BOLD)]
    warnings = doc.get("warnings", [])
    if not warnings:
        lines.append(paint("none", DIM))
    for w in warnings[:10]:
        count = f" (x{fmt_int(w['count'])})" if w.get("count", 1) > 1 else ""
        lines.append(
            f"{time.strftime('%H:%M:%S', time.localtime(w.get('last') or 0))} {w.get('process')} "
            f"{w.get('pid')} {paint.state(w.get('level', ''))} {w.get('message')}{count}"
        )
    return lines


def status_url(admin: str) -> str:
    """`host:port`, `:port` or `http://host:port[/prefix]` -> the /status.json URL."""
    base = admin.strip().rstrip("/")
    if "://" not in base:
        base = "http://" + ("localhost" + base if base.startswith(":") else base)
    return base + "/status.json"


def fetch(url: str, timeout: float = 3.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _fit(line: str, width: int) -> str:
    """Cut a line to the terminal width (visible characters), keeping colour codes balanced."""
    if _visible_len(line) <= width:
        return line
    out, n, i = [], 0, 0
    while i < len(line) and n < width - 1:
        if line[i] == "\x1b":
            end = line.find("m", i)
            out.append(line[i : end + 1])
            i = end + 1
            continue
        out.append(line[i])
        n += 1
        i += 1
    return "".join(out) + RESET + "…" if "\x1b" in line else "".join(out) + "…"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otlp-ingest top", description="Live status of a running server, from its admin port."
    )
    parser.add_argument(
        "--admin",
        default=f"localhost:{os.environ.get('OTLP_ADMIN_PORT', '8888')}",
        help="host:port or http://host:port[/prefix] (default localhost:$OTLP_ADMIN_PORT, else 8888)",
    )
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument("--no-color", action="store_true", help="no colours (also when NO_COLOR is set)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.interval <= 0:
        print("otlp-ingest top: --interval must be positive", file=sys.stderr)
        return 2
    url = status_url(args.admin)
    tty = sys.stdout.isatty()
    colour = tty and not args.no_color and not os.environ.get("NO_COLOR")
    if args.once:
        try:
            doc = fetch(url)
        except (OSError, ValueError) as exc:
            print(f"otlp-ingest top: cannot read {url}: {exc}", file=sys.stderr)
            return 1
        print("\n".join(render(doc, colour)))
        return 0
    if tty:
        sys.stdout.write("\x1b[?25l")  # hide the cursor while redrawing
    try:
        while True:
            try:
                lines = render(fetch(url), colour)
            except (OSError, ValueError) as exc:
                lines = [f"otlp-ingest top: cannot read {url}: {exc}; retrying every {args.interval:g}s"]
            if tty:
                width = shutil.get_terminal_size().columns
                frame = "".join(_fit(line, width) + "\x1b[K\n" for line in lines)
                sys.stdout.write("\x1b[H" + frame + "\x1b[J")  # home, redraw, clear the rest
            else:
                sys.stdout.write("\n".join(lines) + "\n\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    finally:
        if tty:
            sys.stdout.write("\x1b[?25h\n")
            sys.stdout.flush()
