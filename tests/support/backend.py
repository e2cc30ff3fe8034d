"""`RecordingBackend`: run tests/support/recording_backend.py as a subprocess from a test.

with RecordingBackend(fail_first=2, fail_code="unavailable", retry_after_s=0.2) as backend:
    ... point the server at backend.grpc_endpoint or backend.http_endpoint ...
    backend.wait_for_items("traces", 100, timeout=10)
    assert backend.records()["traces"]["keys"] == {...}

TLS: `RecordingBackend(tls_cert=..., tls_key=..., tls_client_ca=..., ca_file=..., client_cert=(c, k))`
serves TLS (mTLS with a client CA) on both ports; `ca_file`/`client_cert` are what this class uses
to reach the control API, and `http_endpoint` is then `https://`.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

SCRIPT = Path(__file__).with_name("recording_backend.py")


class RecordingBackend:
    """Context manager owning one recording backend process on ephemeral ports."""

    def __init__(
        self,
        fail_first: int = 0,
        fail_code: str = "unavailable",
        delay_ms: float = 0.0,
        retry_after_s: float = 1.0,
        start_timeout: float = 15.0,
        max_items: int = 0,
        fail_every: int = 0,
        partial_reject: int = 0,
        grpc_no_compression: bool = False,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_client_ca: str | None = None,
        ca_file: str | None = None,
        client_cert: tuple[str, str] | None = None,
        record_attributes: bool = False,
    ) -> None:
        self._args = [
            "--fail-first",
            str(fail_first),
            "--fail-code",
            fail_code,
            "--delay-ms",
            str(delay_ms),
            "--retry-after-s",
            str(retry_after_s),
            *("--max-items", str(max_items)),
            *("--fail-every", str(fail_every)),
            *("--partial-reject", str(partial_reject)),
            *(["--grpc-no-compression"] if grpc_no_compression else []),
            *(["--record-attributes"] if record_attributes else []),
        ]
        for flag, value in (
            ("--tls-cert", tls_cert),
            ("--tls-key", tls_key),
            ("--tls-client-ca", tls_client_ca),
        ):
            if value:
                self._args += [flag, value]
        self.tls = bool(tls_cert)
        self._start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.grpc_port = 0
        self.http_port = 0
        self._session = requests.Session()
        if self.tls:
            # trust_env off: REQUESTS_CA_BUNDLE in the environment would override `verify`.
            self._session.trust_env = False
            self._session.verify = ca_file or True
            self._session.cert = client_cert
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}"

    def __enter__(self) -> RecordingBackend:
        self._dir = tempfile.TemporaryDirectory(prefix="recording-backend-")
        port_file = os.path.join(self._dir.name, "ports.json")
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--port-file", port_file, *self._args],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self._start_timeout
        while not os.path.exists(port_file):
            if self.proc.poll() is not None:
                raise RuntimeError(f"recording backend exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise TimeoutError("recording backend did not start")
            time.sleep(0.02)  # polling a file with a deadline
        with open(port_file) as f:
            ports = json.load(f)
        self.grpc_port, self.http_port = ports["grpc_port"], ports["http_port"]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._session.close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def records(self) -> dict[str, Any]:
        """Everything recorded so far (see recording_backend.py for the shape)."""
        response = self._session.get(f"{self.http_endpoint}/_records", timeout=10)
        response.raise_for_status()
        return response.json()

    def counts(self) -> dict[str, int]:
        """Items recorded per signal (cheap, unlike `records`)."""
        response = self._session.get(f"{self.http_endpoint}/_counts", timeout=10)
        response.raise_for_status()
        return response.json()

    def first_request(self, signal_name: str) -> bytes | None:
        """The first `signal_name` request accepted since the start or the last reset, serialized
        (None if none yet)."""
        response = self._session.get(f"{self.http_endpoint}/_first", timeout=10)
        response.raise_for_status()
        encoded = response.json()[signal_name]
        return None if encoded is None else base64.b64decode(encoded)

    def control(self, **kwargs: Any) -> None:
        """Change fault injection: fail_next, fail_code, delay_ms, retry_after_s, max_items,
        fail_every, partial_reject (see recording_backend.py)."""
        response = self._session.post(f"{self.http_endpoint}/_control", json=kwargs, timeout=10)
        response.raise_for_status()

    def reset(self) -> None:
        self._session.post(f"{self.http_endpoint}/_reset", timeout=10).raise_for_status()

    def wait_for_items(self, signal_name: str, n: int, timeout: float = 10.0) -> dict[str, Any]:
        """Poll until at least `n` items of `signal_name` were recorded; returns that signal's
        records. Raises TimeoutError with what was seen."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.records()[signal_name]
            if current["items"] >= n:
                return current
            if time.monotonic() > deadline:
                raise TimeoutError(f"{signal_name}: {current['items']} of {n} items after {timeout}s")
            time.sleep(0.05)  # polling with a deadline
