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


def test_image_owns_its_writable_dirs() -> None:
    """The data dir and the durable overlay's queue dir exist in the image, owned by its USER:
    Docker gives a new named volume the owner of the directory it is mounted on (root for a
    path the image lacks), and uid 10001 must write there. (podman chowns a new volume to the
    container's user either way, so tests/deploy/test_container_image.py cannot catch this.)"""
    durable = yaml.safe_load((ROOT / "deploy/k8s/overlays/durable/configmap-patch.yaml").read_text())
    dirs = ["/var/lib/otlp-ingest", durable["data"]["OTLP_QUEUE_DIR"]]
    ins = _instructions()
    setup = next(rest for word, rest in ins if word == "RUN" and "useradd" in rest)
    mkdir = re.search(r"mkdir -p ([^&]+)", setup)
    chown = re.search(r"chown otlp:otlp ([^&]+)", setup)
    assert mkdir and chown, setup
    for path in dirs:
        assert path in mkdir.group(1).split() and path in chown.group(1).split(), path
    assert any(word == "ENV" and "OTLP_DATA_DIR=/var/lib/otlp-ingest" in rest for word, rest in ins)


def test_python_headers_only_in_the_build_stage() -> None:
    """On a base without Python's headers (Debian's python3.11: scripts/build-image.sh) the build
    stage installs them; the runtime stage installs nothing, so it carries no compiler or headers."""
    text = DOCKERFILE.read_text()
    build, runtime = text.split("\nFROM ${PYTHON_IMAGE}\n", 1)
    assert "Python.h" in build and "-dev" in build
    assert "apt-get" not in runtime


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
