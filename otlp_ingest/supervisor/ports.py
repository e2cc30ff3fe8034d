"""The OTLP ports are ours alone: checked before any child starts, then held for the supervisor's life.

Workers bind :4317 and :4318 with SO_REUSEPORT (receiver/worker.py `reuseport_socket`), so a
second server started on the same ports would not fail: it would join the first one's group and
the kernel would split the traffic between two servers, possibly with different destinations.
The supervisor therefore:

1. probes each port with a socket that has SO_REUSEADDR but NOT SO_REUSEPORT. Linux refuses that
   bind (EADDRINUSE) while any other socket holds the port, listening or merely bound, while
   SO_REUSEADDR lets it pass over connections of an earlier run still in TIME_WAIT (a quick
   restart must not be refused);
2. then keeps, on each port, a reservation: a socket with SO_REUSEPORT and without SO_REUSEADDR,
   bound and never listening. The workers' SO_REUSEPORT listeners (same user) bind beside it,
   a later probe by anyone fails against it even while every worker is restarting, and, never
   listening, it is in no SO_REUSEPORT group: the kernel never hands it a connection
   (tests/integration/test_second_server.py checks both).

`PortTaken` carries the one line the supervisor prints: the port and what holds it (pid and
command line from psutil when the holder is visible to this user).
"""

from __future__ import annotations

import contextlib
import errno
import socket

import psutil

CMDLINE_CHARS = 160  # of a holder's command line in the message


class PortTaken(Exception):
    """A port cannot be bound; str() is the whole message (one line)."""


def _family(bind: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in bind else socket.AF_INET


def show_address(bind: str, port: int) -> str:
    host = bind.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def probe(bind: str, port: int) -> None:
    """Raise OSError (EADDRINUSE) if any socket holds (bind, port); see the module docstring."""
    with socket.socket(_family(bind), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind.strip("[]"), port))


def reservation(bind: str, port: int) -> socket.socket:
    """A bound, never-listening SO_REUSEPORT socket on (bind, port); raises OSError."""
    sock = socket.socket(_family(bind), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((bind.strip("[]"), port))
    except BaseException:
        sock.close()
        raise
    return sock


def reserve(bind: str, ports: list[tuple[str, int, str]]) -> list[socket.socket]:
    """Probe then reserve each (what, port, setting) of `ports` (port 0 is skipped: each worker
    would get a port of its own anyway). Raises PortTaken naming the first port that is taken;
    nothing stays reserved then."""
    held: list[socket.socket] = []
    try:
        for what, port, setting in ports:
            if port == 0:
                continue
            try:
                probe(bind, port)
                held.append(reservation(bind, port))
            except OSError as exc:
                raise PortTaken(message(what, bind, port, exc, setting)) from None
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held


def message(what: str, bind: str, port: int, exc: OSError, setting: str) -> str:
    """`cannot listen on <what> port <addr>: <reason>[, held by ...] (<what to do>)`."""
    reason = exc.strerror or str(exc)
    line = f"cannot listen on {what} port {show_address(bind, port)}: {reason}"
    if exc.errno == errno.EADDRINUSE:
        line += f", {holder(port)}"
        advice = f"stop that server, or set {setting} to a free port"
    elif exc.errno == errno.EADDRNOTAVAIL:
        advice = "set OTLP_BIND to an address of this host, 127.0.0.1 or 0.0.0.0"
    elif exc.errno == errno.EACCES:
        advice = f"ports below 1024 need privileges: set {setting} to 1024 or above"
    else:
        advice = f"check OTLP_BIND and {setting}"
    return f"{line} ({advice})"


def holder(port: int) -> str:
    """Who listens on `port`: "held by pid N (cmdline)", with the parent when N is a child of an
    otlp-ingest supervisor; what psutil cannot see is said so."""
    pids: list[int] = []
    try:
        for conn in psutil.net_connections(kind="tcp"):
            listens = conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN
            if listens and conn.pid is not None and conn.pid not in pids:
                pids.append(conn.pid)
    except (psutil.Error, OSError):
        pids = []
    if not pids:
        return (
            "held by a process not visible to this user, or bound without listening "
            f"(`ss -ltnp 'sport = :{port}'` as root names it)"
        )
    # A worker's listener stands for its supervisor: name the `serve` process a user would stop.
    tops: dict[int, int] = {}  # holder -> one listening pid under it
    for pid in pids:
        top = pid
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            parent = proc.parent()
            if parent is not None and "_child" in proc.cmdline():
                top = parent.pid
        tops.setdefault(top, pid)
    parts = []
    for top, pid in list(tops.items())[:2]:
        text = describe(top)
        if top != pid:
            text += f", whose child pid {pid} listens"
        parts.append(text)
    return "held by pid " + "; pid ".join(parts)


def describe(pid: int) -> str:
    """`1234 (python -m otlp_ingest serve)`, or `1234` when the command line is not visible."""
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return str(pid)
    if len(cmdline) > CMDLINE_CHARS:
        cmdline = cmdline[: CMDLINE_CHARS - 3] + "..."
    return f"{pid} ({cmdline})" if cmdline else str(pid)
