"""Bearer-token authentication of OTLP requests, shared by both transports.

With `OTLP_AUTH_TOKENS_FILE` set, every OTLP request (gRPC and HTTP) must carry
`Authorization: Bearer <token>` (gRPC: metadata key `authorization`) with a token from that file.
The admin port (`/health`, `/ready`, `/metrics`) is not affected.

Tokens file format (UTF-8 text, at most 1 MiB), one entry per line:

    # a comment: lines whose first non-blank character is "#"
    3b1f0c4e9a7d52e8c6f1a0b9d8e7f6a5          <- an unnamed token (labelled "unnamed")
    team-payments: 9f8e7d6c5b4a39281706f5e4    <- a named token: "team-payments" labels metrics

- Blank lines and comment lines are ignored; blanks around an entry and around ":" are stripped.
- `name: token` is split at the first ":". A name is 1-64 characters of `A-Z a-z 0-9 _ . -`,
  starting with a letter or digit. So a token that itself contains ":" needs a name in front.
- A token is 16-4096 visible ASCII characters (0x21-0x7e, no blanks): what travels unchanged in
  an HTTP header and in gRPC metadata. Generate one with `openssl rand -hex 32`.
- The same token twice is an error; one name on several tokens is fine (rotation: a client's old
  and new token side by side).
- A file with no token (empty, or only comments) is an error: an empty list would lock every
  client out, which is never what an operator meant.
Every error names the file and the line, never the token.

Checking (`TokenStore.check`): the presented token is hashed (SHA-256) and the digest compared
with `hmac.compare_digest` against every stored digest without stopping at a match, so the time
taken depends neither on the token's content nor on which entry matched. Only digests are kept in
memory and passed between processes.

Process model (see supervisor/main.py): the supervisor reads the tokens file, validates it and
writes the digests to a private file (`write_digest_file`, mode 0600 in its own temporary
directory) whose path reaches the workers in env `DIGESTS_ENV`. Workers read that file, never the
operator's file, so every worker sees the same validated list and a worker restarted while the
operator's file is broken still boots with the last good tokens. Without the supervisor (a worker
run on its own, as tests do), `TokenStore.for_worker` reads the tokens file itself.

Reload: the supervisor re-reads the tokens file on SIGHUP and when its stat signature changes
(Kubernetes swaps mounted Secret files in place); a bad file keeps the previous tokens and logs
why. When the tokens changed it rewrites the digest file and sends SIGUSR1 to every ready worker.
A worker's SIGUSR1 handler only calls `request_reload()` (sets a flag); the next `check()` (or the
worker's loop, via `reload_if_requested()`) re-reads the digest file, keeping the previous tokens
if that fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from otlp_ingest import errors

if TYPE_CHECKING:  # pragma: no cover
    from otlp_ingest.config import Settings

log = logging.getLogger(__name__)

# Env var (set by the supervisor for each worker) naming the digest file the worker reads.
DIGESTS_ENV = "OTLP_INGEST_AUTH_DIGESTS_FILE"
UNNAMED = "unnamed"
MAX_FILE_BYTES = 1024 * 1024
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 4096
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TOKEN = re.compile(r"[\x21-\x7e]+")
_DIGEST_HEADER = "otlp-ingest token digests v1"
# RFC 6750 section 3: no error code when the request had no credentials at all.
CHALLENGE_MISSING = 'Bearer realm="otlp"'
CHALLENGE_INVALID = 'Bearer realm="otlp", error="invalid_token"'


class TokenFileError(Exception):
    """The tokens file (or the digest file) cannot be used. The message names the file and line
    and is safe to log: it never contains a token."""


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One accepted token: its name (a metric label) and the SHA-256 digest of the token."""

    name: str
    digest: bytes


def token_digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def parse_tokens(text: str, source: str) -> tuple[TokenEntry, ...]:
    """The entries of a tokens file's text (format in the module docstring). Raises
    TokenFileError naming `source` and the line."""
    entries: list[TokenEntry] = []
    seen: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if sep:
            name, token = name.strip(), token.strip()
            if not _NAME.fullmatch(name):
                raise TokenFileError(
                    f"{source}: line {number}: bad token name (expected 1-64 characters of "
                    "A-Z a-z 0-9 _ . - before the ':', starting with a letter or digit)"
                )
        else:
            name, token = UNNAMED, line
        if not token:
            raise TokenFileError(f"{source}: line {number}: no token after the name {name!r}")
        if not _TOKEN.fullmatch(token):
            raise TokenFileError(
                f"{source}: line {number}: the token has blanks or non-ASCII characters "
                "(expected visible ASCII only, e.g. from `openssl rand -hex 32`)"
            )
        if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
            raise TokenFileError(
                f"{source}: line {number}: the token has {len(token)} characters "
                f"(expected {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS}, e.g. from `openssl rand -hex 32`)"
            )
        digest = token_digest(token.encode("ascii"))
        if digest in seen:
            raise TokenFileError(f"{source}: line {number}: repeats the token of line {seen[digest]}")
        seen[digest] = number
        entries.append(TokenEntry(name, digest))
    if not entries:
        raise TokenFileError(
            f"{source}: no tokens (expected one bearer token per line; blank lines and # comments "
            "are ignored)"
        )
    return tuple(entries)


def _read_text(path: str, what: str) -> str:
    if os.path.isdir(path):
        raise TokenFileError(f"{path}: is a directory (expected a readable {what})")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot read ({exc.strerror}) (expected a readable {what})") from None
    if len(data) > MAX_FILE_BYTES:
        raise TokenFileError(f"{path}: larger than {MAX_FILE_BYTES} bytes (expected a {what})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenFileError(f"{path}: not UTF-8 text (expected a {what})") from None


def load_tokens_file(path: str) -> tuple[TokenEntry, ...]:
    """Read and parse the operator's tokens file. Raises TokenFileError (unreadable, too large,
    not text, a bad line, no tokens)."""
    return parse_tokens(_read_text(path, "tokens file"), path)


def write_digest_file(path: str, entries: tuple[TokenEntry, ...]) -> None:
    """Write the workers' copy of `entries` atomically (temp file + rename), mode 0600.

    Format: the line `otlp-ingest token digests v1`, then one line per entry:
    `<name> <sha256 hex of the token>`.
    """
    lines = [_DIGEST_HEADER, *(f"{e.name} {e.digest.hex()}" for e in entries)]
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".auth-", dir=directory)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_digest_file(path: str) -> tuple[TokenEntry, ...]:
    """Read a file written by `write_digest_file`. Raises TokenFileError."""
    lines = _read_text(path, "token digest file").splitlines()
    if not lines or lines[0] != _DIGEST_HEADER:
        raise TokenFileError(f"{path}: not a token digest file (first line {_DIGEST_HEADER!r} missing)")
    entries = []
    for number, line in enumerate(lines[1:], start=2):
        name, _, hex_digest = line.partition(" ")
        try:
            digest = bytes.fromhex(hex_digest)
        except ValueError:
            digest = b""
        if not _NAME.fullmatch(name) or len(digest) != hashlib.sha256().digest_size:
            raise TokenFileError(f"{path}: line {number}: not `<name> <sha256 hex>`")
        entries.append(TokenEntry(name, digest))
    if not entries:
        raise TokenFileError(f"{path}: no tokens")
    return tuple(entries)


def _token_of(authorization: str | bytes | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` value; None when absent or another scheme.
    The scheme is case-insensitive (RFC 9110 section 11.1)."""
    if authorization is None:
        return None
    value = authorization if isinstance(authorization, bytes) else authorization.encode("utf-8", "replace")
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    return token or None


class TokenStore:
    """The tokens one worker accepts. Thread-safe: gRPC handler threads and the HTTP event loop
    call `check` concurrently; a reload swaps one immutable tuple.

    `source` re-reads the tokens (the digest file, or the tokens file) on `reload`.
    """

    def __init__(
        self, entries: tuple[TokenEntry, ...], source: Callable[[], tuple[TokenEntry, ...]], where: str
    ) -> None:
        # Imported here, not at the top: config (validation) and the supervisor (digest file) use
        # this module too, and must not load the receivers' metric definitions.
        from otlp_ingest.telemetry import metrics
        from otlp_ingest.telemetry.logging import RateLimitedLogger

        self._entries = entries
        self._source = source
        self.where = where
        self._reload_requested = False
        self._lock = threading.Lock()
        self._refused = metrics.RECEIVER_UNAUTHENTICATED
        self._accepted = metrics.RECEIVER_AUTHENTICATED
        self._children: dict[tuple[str, str], object] = {}
        self._refusal_log = RateLimitedLogger(log)

    @classmethod
    def for_worker(cls, settings: Settings) -> TokenStore | None:
        """The worker's store: None when authentication is off (no auth_tokens_file). Reads the
        supervisor's digest file (env DIGESTS_ENV) or, without one, the tokens file itself.
        Raises TokenFileError: the worker cannot boot (exit ExitCode.CHILD_BOOT)."""
        if not settings.auth_tokens_file:
            return None
        digests = os.environ.get(DIGESTS_ENV)
        if digests:
            return cls(read_digest_file(digests), lambda: read_digest_file(digests), digests)
        path = settings.auth_tokens_file
        return cls(load_tokens_file(path), lambda: load_tokens_file(path), path)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """The distinct token names, for log lines (never the tokens)."""
        return sorted({e.name for e in self._entries})

    def request_reload(self) -> None:
        """Async-signal-safe: only sets a flag. The next `check` or `reload_if_requested` acts."""
        self._reload_requested = True

    def reload_if_requested(self) -> None:
        if self._reload_requested:
            with self._lock:
                if self._reload_requested:
                    self._reload_requested = False
                    self.reload()

    def reload(self) -> str | None:
        """Re-read the tokens now. Returns None on success, else the reason (logged too): the
        previous tokens stay in force."""
        try:
            entries = self._source()
        except TokenFileError as exc:
            log.error("tokens not reloaded, keeping the previous %d: %s", len(self._entries), exc)
            return str(exc)
        changed = entries != self._entries
        self._entries = entries
        log.info(
            "tokens reloaded from %s: %d token(s)%s, names: %s",
            self.where,
            len(entries),
            "" if changed else " (unchanged)",
            ", ".join(self.names()),
        )
        return None

    def match(self, authorization: str | bytes | None) -> str | None:
        """The name of the token in `authorization` (`Bearer <token>`), or None. Constant time in
        the token (see the module docstring); counts nothing."""
        token = _token_of(authorization)
        if token is None:
            return None
        digest = token_digest(token)
        found: str | None = None
        for entry in self._entries:  # every entry, no early exit
            if hmac.compare_digest(entry.digest, digest):
                found = entry.name
        return found

    def check(self, authorization: str | bytes | None, transport: str) -> str:
        """What a transport calls for every OTLP request, before reading its body: returns the
        token's name, or raises `errors.Unauthenticated` (gRPC UNAUTHENTICATED / HTTP 401 with
        `WWW-Authenticate: <exc.challenge>`). Counts both outcomes per `transport`."""
        self.reload_if_requested()
        name = self.match(authorization)
        if name is not None:
            self._count(self._accepted, transport, name)
            return name
        self._count(self._refused, transport, "")
        if _token_of(authorization) is None:
            reason = "no bearer token" if authorization is None else "not a Bearer authorization"
            challenge = CHALLENGE_MISSING
        else:
            reason, challenge = "unknown bearer token", CHALLENGE_INVALID
        self._refusal_log.warning(
            f"unauthenticated-{transport}", "%s request refused (401/UNAUTHENTICATED): %s", transport, reason
        )
        raise errors.Unauthenticated(
            f"{reason}: send the header 'Authorization: Bearer <token>' with a token of this server",
            challenge,
        )

    def _count(self, counter: object, transport: str, name: str) -> None:
        child = self._children.get((transport, name))
        if child is None:
            labels = (transport, name) if name else (transport,)
            child = self._children[(transport, name)] = counter.labels(*labels)  # type: ignore[attr-defined]
        child.inc()  # type: ignore[attr-defined]
