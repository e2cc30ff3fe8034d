"""Headless Debian Chromium driven over the DevTools protocol on a pipe, for page tests.

    with Chromium(workdir) as browser:
        page = browser.open("http://127.0.0.1:PORT/")
        wait_until(lambda: "ready" in page.evaluate("document.body.innerText"), 10)
        page.screenshot(workdir / "page.png")

`--remote-debugging-pipe` makes Chromium read protocol commands on fd 3 and answer on fd 4,
each message a JSON object followed by a NUL byte: no port, no websocket library, no driver
binary. Started with the flags this machine needs (no sandbox as root; no background networking,
component updates or sync, whose connections the closed network refuses) and a fresh profile.

Chromium is the Debian package (`/usr/bin/chromium`, installed by scripts/install-test-tools.sh);
a missing browser FAILS the test rather than skipping it, like the deploy tests' tools.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--remote-debugging-pipe",
)


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium not found: run `scripts/install-test-tools.sh` (Debian package chromium)")


class Page:
    """One tab, addressed by its DevTools session."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self._browser = browser
        self.session = session

    def call(
        self, method: str, params: dict[str, Any] | None = None, timeout: float = 20.0
    ) -> dict[str, Any]:
        return self._browser.call(method, params, session=self.session, timeout=timeout)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable results)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (beyond the viewport) at `path`."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call(
            "Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True}
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


class Chromium:
    """A headless Chromium process with a fresh profile; a context manager."""

    def __init__(self, workdir: Path, width: int = 1280, height: int = 1000) -> None:
        self._workdir = Path(workdir)
        self._size = (width, height)
        self.proc: subprocess.Popen[bytes] | None = None
        self._next_id = 0
        self._buffer = b""
        self._profile = ""
        self._to_browser = self._from_browser = -1

    def __enter__(self) -> Chromium:
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=self._workdir)
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        command = [
            chromium_path(),
            *FLAGS,
            f"--user-data-dir={self._profile}",
            f"--window-size={self._size[0]},{self._size[1]}",
            "about:blank",
        ]
        # Chromium wants the pipe on fds 3 and 4 exactly: a shell's redirections put them there.
        shell = f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        with open(self._workdir / "chromium.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["bash", "-c", shell, "chromium", *command],
                pass_fds=(to_browser_r, from_browser_w),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,  # its renderer and zygote processes too: killed as a group if need be
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        try:
            self.call("Browser.getVersion", timeout=30.0)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, url: str) -> Page:
        """A new tab at `url` (returns once the navigation was started; wait for content)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})  # --window-size sizes it
        attached = self.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        page.call("Page.enable")
        page.call("Page.navigate", {"url": url})
        return page

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        """Send one command and wait for its answer (events in between are dropped)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._next_id:
                    if "error" in answer:
                        raise AssertionError(f"{method} failed: {answer['error']}")
                    return answer.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"chromium did not answer {method} within {timeout}s; {self.log_tail()}")
            readable, _, _ = select.select([self._from_browser], [], [], left)
            if readable:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise AssertionError(f"chromium closed the pipe during {method}; {self.log_tail()}")
                self._buffer += chunk

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self._workdir / "chromium.log").read_text(errors="replace")
        except OSError:
            return "(no chromium log)"
        return "chromium log:\n" + "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Close the browser and wait for it (killed after 10 s); no process is left behind."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(AssertionError, OSError):
                self.call("Browser.close", timeout=5.0)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for fd in (self._to_browser, self._from_browser):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._to_browser = self._from_browser = -1
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)
