"""`TcpProxy`: a layer-4 forwarder whose target can be switched, standing in for a Kubernetes
Service (kube-proxy) whose endpoints change when the HPA adds a pod.

Like kube-proxy it picks the target when a connection opens and never moves an open connection:
existing connections keep going to the old target, new ones go to the new one. It only copies
bytes (no parsing), so what the client and the server say to each other is untouched.

    with TcpProxy(("127.0.0.1", port_a)) as proxy:
        ... client -> proxy.endpoint ...
        proxy.retarget(("127.0.0.1", port_b))
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support.waiting import free_port


class TcpProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.connections: list[tuple[str, int]] = []  # the target each connection was sent to
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    def retarget(self, target: tuple[str, int]) -> None:
        """New connections go to `target` from now on; open ones stay where they are."""
        with self._lock:
            self.target = target

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                target = self.target
                self.connections.append(target)
            try:
                upstream = socket.create_connection(target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:  # one side closed: pass the close on, as a TCP forwarder does
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
