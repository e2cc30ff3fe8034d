"""The bearer-token file parser, the digest file and the token store (otlp_ingest.auth)."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from otlp_ingest import errors
from otlp_ingest.auth import (
    CHALLENGE_INVALID,
    CHALLENGE_MISSING,
    DIGESTS_ENV,
    UNNAMED,
    TokenEntry,
    TokenFileError,
    TokenStore,
    load_tokens_file,
    parse_tokens,
    read_digest_file,
    write_digest_file,
)
from otlp_ingest.config import Settings

A = "a" * 32
B = "0123456789abcdef0123456789abcdef"
C = "Zm9vYmFyLWJhei0xMjM0NTY3ODkw+/=="  # base64 characters are allowed


def entry(name: str, token: str) -> TokenEntry:
    return TokenEntry(name, hashlib.sha256(token.encode()).digest())


def store(*tokens: tuple[str, str]) -> TokenStore:
    entries = tuple(entry(n, t) for n, t in tokens)
    return TokenStore(entries, lambda: entries, "test")


# --- the tokens file ---------------------------------------------------------------------------


def test_format_comments_blanks_names_and_whitespace() -> None:
    text = f"""
# otlp-ingest clients
{A}
   team-payments :   {B}
\t# indented comment

checkout.v2: {C}
"""
    assert parse_tokens(text, "f") == (entry(UNNAMED, A), entry("team-payments", B), entry("checkout.v2", C))


def test_one_name_may_hold_several_tokens_for_rotation() -> None:
    assert [e.name for e in parse_tokens(f"team: {A}\nteam: {B}\n", "f")] == ["team", "team"]


def test_a_token_with_a_colon_needs_a_name_in_front() -> None:
    [e] = parse_tokens(f"svc: {A}:{B}", "f")
    assert e == entry("svc", f"{A}:{B}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "f: no tokens (expected one bearer token per line"),
        ("\n  \n# nothing here\n", "f: no tokens"),
        (f"{A}\nbad name: {B}\n", "f: line 2: bad token name"),
        (f"-dash: {A}", "f: line 1: bad token name"),
        (f"{'n' * 65}: {A}", "f: line 1: bad token name"),
        ("name:", "f: line 1: no token after the name 'name'"),
        (f"name: {A} {B}", "f: line 1: the token has blanks or non-ASCII characters"),
        (f"{A}é", "f: line 1: the token has blanks or non-ASCII characters"),
        ("short-token", "f: line 1: the token has 11 characters (expected 16 to 4096"),
        ("x" * 4097, "f: line 1: the token has 4097 characters"),
        (f"{A}\n\nother: {A}\n", "f: line 3: repeats the token of line 1"),
    ],
)
def test_errors_name_the_file_and_line_never_the_token(text: str, message: str) -> None:
    with pytest.raises(TokenFileError) as exc:
        parse_tokens(text, "f")
    assert str(exc.value).startswith(message), str(exc.value)
    for secret in (A, B, "short-token", "x" * 4097):
        assert secret not in str(exc.value)


def test_load_tokens_file_reports_unreadable_and_odd_files(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"{A}\n")
    assert load_tokens_file(str(path)) == (entry(UNNAMED, A),)
    for bad, reason in (
        (tmp_path / "missing", "cannot read (No such file or directory)"),
        (tmp_path, "is a directory"),
    ):
        with pytest.raises(TokenFileError) as exc:
            load_tokens_file(str(bad))
        assert str(exc.value).startswith(f"{bad}: {reason}"), str(exc.value)
    path.write_bytes(b"\xff\xfe" + A.encode())
    with pytest.raises(TokenFileError, match="not UTF-8"):
        load_tokens_file(str(path))
    path.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(TokenFileError, match="larger than"):
        load_tokens_file(str(path))


# --- the digest file ---------------------------------------------------------------------------


def test_digest_file_round_trip_private_and_without_tokens(tmp_path: Path) -> None:
    entries = parse_tokens(f"{A}\nteam: {B}\n", "f")
    path = tmp_path / "digests"
    write_digest_file(str(path), entries)
    assert read_digest_file(str(path)) == entries
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert A not in text and B not in text
    assert os.listdir(tmp_path) == ["digests"]  # the temp file was renamed, nothing left over


@pytest.mark.parametrize(
    "text",
    ["", "something else\n", "otlp-ingest token digests v1\n", "otlp-ingest token digests v1\nname nothex\n"],
)
def test_bad_digest_files_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "digests"
    path.write_text(text)
    with pytest.raises(TokenFileError):
        read_digest_file(str(path))


# --- checking ----------------------------------------------------------------------------------


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    "header",
    [f"Bearer {B}", f"bearer {B}", f"BEARER   {B}", f" Bearer {B} ", f"Bearer {B}".encode()],
)
def test_the_right_token_in_any_accepted_spelling(header: str | bytes) -> None:
    s = store(("team", B))
    before = _sample("otlp_receiver_authenticated_requests_total", transport="http", token_name="team")
    assert s.check(header, "http") == "team"
    after = _sample("otlp_receiver_authenticated_requests_total", transport="http", token_name="team")
    assert after == before + 1


@pytest.mark.parametrize(
    ("header", "challenge", "reason"),
    [
        (None, CHALLENGE_MISSING, "no bearer token"),
        ("", CHALLENGE_MISSING, "not a Bearer authorization"),
        (f"Basic {B}", CHALLENGE_MISSING, "not a Bearer authorization"),
        ("Bearer", CHALLENGE_MISSING, "not a Bearer authorization"),
        ("Bearer ", CHALLENGE_MISSING, "not a Bearer authorization"),
        (B, CHALLENGE_MISSING, "not a Bearer authorization"),  # the token without the scheme
        (f"Bearer {A}", CHALLENGE_INVALID, "unknown bearer token"),
        (f"Bearer {B[:-1]}", CHALLENGE_INVALID, "unknown bearer token"),  # a prefix
        (f"Bearer {B}x", CHALLENGE_INVALID, "unknown bearer token"),  # an extension
        (f"Bearer {B.upper()}", CHALLENGE_INVALID, "unknown bearer token"),  # tokens are case-sensitive
        ("Bearer \u00e9\u00e9", CHALLENGE_INVALID, "unknown bearer token"),
    ],
)
def test_refusals_are_unauthenticated_counted_and_say_why(
    header: str | None, challenge: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    s = store(("team", B))
    before = _sample("otlp_receiver_unauthenticated_requests_total", transport="grpc")
    with caplog.at_level(logging.WARNING), pytest.raises(errors.Unauthenticated) as exc:
        s.check(header, "grpc")
    assert exc.value.challenge == challenge
    assert exc.value.message.startswith(reason)
    assert B not in exc.value.message and A not in exc.value.message
    assert _sample("otlp_receiver_unauthenticated_requests_total", transport="grpc") == before + 1
    assert all(B not in r.getMessage() and A not in r.getMessage() for r in caplog.records)


def test_every_entry_is_compared_no_early_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant time in which entry matched: the comparison runs against every digest."""
    import otlp_ingest.auth as auth

    calls = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    s = store(("first", A), ("second", B), ("third", C))
    for header in (f"Bearer {A}", f"Bearer {C}", "Bearer nothing-like-any-of-them"):
        calls.clear()
        s.match(header)
        assert len(calls) == 3


def test_reload_swaps_tokens_and_keeps_the_previous_ones_on_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"old: {A}\n")
    s = TokenStore(load_tokens_file(str(path)), lambda: load_tokens_file(str(path)), str(path))
    assert s.check(f"Bearer {A}", "http") == "old"
    path.write_text(f"new: {B}\n")
    s.request_reload()  # what a SIGUSR1 handler does: nothing is read yet
    assert s.names() == ["old"]
    assert s.check(f"Bearer {B}", "http") == "new"  # the next check applies it
    with pytest.raises(errors.Unauthenticated):
        s.check(f"Bearer {A}", "http")
    # An empty (or unreadable) file keeps what was in force, and says why.
    for broken in ("# nothing\n", None):
        if broken is None:
            path.unlink()
        else:
            path.write_text(broken)
        with caplog.at_level(logging.ERROR):
            reason = s.reload()
        assert reason is not None and str(path) in reason
        assert "keeping the previous 1" in caplog.text
        assert s.check(f"Bearer {B}", "http") == "new"
    assert A not in caplog.text and B not in caplog.text


def test_for_worker_reads_the_digest_file_or_the_tokens_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert TokenStore.for_worker(Settings()) is None
    tokens = tmp_path / "tokens"
    tokens.write_text(f"team: {A}\n")
    settings = Settings(auth_tokens_file=str(tokens))
    monkeypatch.delenv(DIGESTS_ENV, raising=False)
    s = TokenStore.for_worker(settings)
    assert s is not None and s.where == str(tokens) and s.check(f"Bearer {A}", "http") == "team"
    # With the supervisor's digest file, the worker never reads the operator's file.
    digests = tmp_path / "digests"
    write_digest_file(str(digests), parse_tokens(f"other: {B}\n", "x"))
    monkeypatch.setenv(DIGESTS_ENV, str(digests))
    tokens.unlink()
    s = TokenStore.for_worker(settings)
    assert s is not None and s.check(f"Bearer {B}", "http") == "other"
    digests.unlink()
    with pytest.raises(TokenFileError):
        TokenStore.for_worker(settings)
