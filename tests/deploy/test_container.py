"""Dockerfile and docker-compose: hadolint, and the facts the issue asks for."""

from __future__ import annotations

import json
import re

import yaml

from tests.deploy.tools import ROOT, run, tool

DOCKERFILE = ROOT / "Dockerfile"


def test_hadolint_clean() -> None:
    proc = run([tool("hadolint"), str(DOCKERFILE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_facts() -> None:
    ins = _instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    assert any(word == "ARG" and "slim" in rest for word, rest in ins), "slim Python base"
    user = [rest for word, rest in ins if word == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0"), "runs as non-root"
    assert any(w == "EXPOSE" and rest.split() == ["4317", "4318", "8888"] for w, rest in ins)
    health = next(rest for word, rest in ins if word == "HEALTHCHECK")
    assert "/health" in health
    # Exec form: the supervisor is PID 1 and receives SIGTERM itself (no shell in between).
    entry = json.loads(next(rest for word, rest in ins if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in ins if word == "CMD"))
    assert entry + cmd == ["python", "-m", "otlp_ingest", "serve"]
    assert "pip install --no-cache-dir ." in DOCKERFILE.read_text()
    # The C extensions (setup.py) are built in the build stage and their imports checked there.
    copies = [rest for word, rest in ins if word == "COPY"]
    assert any("setup.py" in rest.split() for rest in copies)
    for source in re.findall(r'"(otlp_ingest/\S+)\.c"', (ROOT / "setup.py").read_text()):
        assert source.replace("/", ".") in DOCKERFILE.read_text()
    # ...from the installed package: run in /src without -I, the source tree (no .so) shadows it
    # and the check fails for every build (issue 19).
    checks = re.findall(r"/opt/venv/bin/python (-\S+ )*-c", DOCKERFILE.read_text())
    assert checks and all("-I " in flags for flags in checks), "import checks must run isolated (-I)"


def test_dockerignore_keeps_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("*")] == "*"
    assert {"!pyproject.toml", "!setup.py", "!README.md", "!otlp_ingest/"} <= set(lines)


def test_compose_stack() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"otlp-ingest", "jaeger", "prometheus", "grafana"}
    ingest = services["otlp-ingest"]
    assert ingest["environment"]["OTLP_ENDPOINT"] == "jaeger:4317"
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert ingest["read_only"] is True and "/tmp" in ingest["tmpfs"]
    # stop_grace_period above OTLP_SHUTDOWN_TIMEOUT, so a stop lets the rings drain.
    assert int(ingest["stop_grace_period"].rstrip("s")) > int(
        ingest["environment"]["OTLP_SHUTDOWN_TIMEOUT"].rstrip("s")
    )
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"compose mounts missing {source}"
    prom_mounts = " ".join(services["prometheus"]["volumes"])
    assert "alerts.yml:/etc/prometheus/rules/alerts.yml" in prom_mounts
