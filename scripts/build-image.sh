#!/usr/bin/env bash
# build-image.sh: build the otlp-ingest image with podman, on a machine with no Docker daemon and
# no registry: the Debian base is made locally with debootstrap (Debian's own Python 3.11) and
# cached, then the Dockerfile is built on it with `--build-arg PYTHON_IMAGE=<base>`.
# tests/deploy/test_container_image.py runs it; so can anyone (docs/operations.md, "podman").
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TAG="localhost/otlp-ingest:dev"
BASE="localhost/otlp-ingest-base:bookworm"
BUILD_STAGE_TAG="localhost/otlp-ingest-build-stage:latest"
PYTHON_IMAGE=""
RUNTIME="runc"
SUITE="bookworm"
# What the Dockerfile needs of a base: python (python-is-python3), venv with pip (python3.11-venv)
# and a CA bundle for a server exporting over TLS (python:3.11-slim has ca-certificates too).
# Not the C headers (libpython3.11-dev and the libc6-dev it pulls, 48 MB): the Dockerfile's build
# stage installs them where the base lacks them, so the runtime image carries none.
# python3-distutils by name: python3.11-venv depends on the virtual python3.11-distutils, which
# debootstrap does not resolve (it then fails to configure python3.11-venv).
PACKAGES="python3.11,python3.11-venv,python3-distutils,python-is-python3,ca-certificates"
# Like Debian's slim images (and so python:3.11-slim): no documentation, manuals or translations
# (54 MB of a 233 MB base), for what debootstrap installed and for any package installed later.
DPKG_EXCLUDES='path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*'
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/otlp-ingest"

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--tag IMAGE] [--python-image IMAGE] [--runtime NAME]

Builds the Dockerfile with podman (--format docker: the OCI format drops the HEALTHCHECK).
The base (the Dockerfile's PYTHON_IMAGE), unless --python-image is given, is
${BASE}: Debian ${SUITE} (minbase) made with debootstrap from the
apt mirror of this machine's /etc/apt/sources.list(.d), upgraded from the updates and security
suites, with ${PACKAGES//,/ }
and, as in Debian's slim images, no docs, manuals or translations. It is made once (as root,
about 90 s) and kept: skipped while podman has it for this recipe, else imported from the
tarball of its root file system cached in ${CACHE}/.
Pip inside the build reaches the index as pip on this machine does: the CA bundle (PIP_CERT,
REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, SSL_CERT_FILE or pip's cert setting) and the index settings
(index-url, extra-index-url, trusted-host, timeout from the environment or pip's configuration;
http(s) indexes only) are mounted read-only into the build's RUN steps, never into a layer.

Options:
  --tag IMAGE           name of the built image (default ${TAG})
  --python-image IMAGE  build on this base instead (e.g. python:3.11-slim-bookworm, pulled by
                        podman from a registry when it is not present)
  --runtime NAME        OCI runtime (default ${RUNTIME}: crun fails on hosts with hybrid cgroups)
  -h, --help            show this help

Runs with --network host and ulimits at this machine's hard limits (podman's defaults exceed
them on some hosts). Exit status: 0 built, 1 the build failed, 2 usage error or missing tool.
USAGE
}

die() { echo "build-image: $*" >&2; exit "${2:-1}"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) TAG="${2:?--tag needs an image name}"; shift 2 ;;
        --python-image) PYTHON_IMAGE="${2:?--python-image needs an image}"; shift 2 ;;
        --runtime) RUNTIME="${2:?--runtime needs a name}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "build-image: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

command -v podman >/dev/null 2>&1 \
    || die "required tool 'podman' not found in PATH; install it (scripts/install-test-tools.sh)" 2
PODMAN=(podman --runtime "$RUNTIME")

WORK="$(mktemp -d "${TMPDIR:-/tmp}/otlp-ingest-build.XXXXXX")"
ROOTFS=""
cleanup() {
    rm -rf "$WORK"
    if [[ -n "$ROOTFS" ]]; then rm -rf --one-file-system "$ROOTFS"; fi
}
trap cleanup EXIT

# ulimits: podman's defaults (nofile 1048576) exceed the hard limits of some hosts, and then
# runc cannot start any container ("error setting rlimits"). Open files: this host's hard limit.
# Processes: 4096 is plenty (RLIMIT_NPROC counts the threads of uid 10001: a few hundred) and
# starts where higher values were refused (on one VM even its own hard limit, 96370).
NOFILE="$(ulimit -Hn)"
[[ "$NOFILE" != unlimited ]] || NOFILE=1048576
ULIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit nproc=4096:4096)

# The first URI that serves SUITE in this machine's apt sources (deb822 .sources or one-line
# .list files); empty if none does.
apt_uri() {
    local suite="$1" f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -r "$f" ]] || continue
        if [[ "$f" == *.sources ]]; then
            awk -v suite="$suite" 'BEGIN { RS = ""; FS = "\n" }
                {
                    types = uris = suites = ""; enabled = 1
                    for (i = 1; i <= NF; i++) {
                        line = $i
                        if (line ~ /^[ \t]*#/) continue
                        if (line ~ /^Types:/) types = line
                        if (line ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", line); uris = line }
                        if (line ~ /^Suites:/) suites = line " "
                        if (line ~ /^Enabled:[ \t]*no/) enabled = 0
                    }
                    if (enabled && types ~ /[ \t]deb([ \t]|$)/ && suites ~ ("[ \t]" suite " ")) {
                        split(uris, u, /[ \t]+/); print u[1]; exit
                    }
                }' "$f"
        else
            awk -v suite="$suite" '$1 == "deb" {
                    i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                    if ($(i + 1) == suite) { print $i; exit }
                }' "$f"
        fi
    done | head -n 1
}

# The base: debootstrap once per recipe; a podman image labelled with the recipe's hash, and a
# tarball of its root file system in the cache.
make_base() {
    local mirror security recipe hash tarball label
    mirror="$(apt_uri "$SUITE")"
    mirror="${mirror:-http://deb.debian.org/debian}"
    security="$(apt_uri "${SUITE}-security")"
    recipe="suite=$SUITE packages=$PACKAGES mirror=$mirror security=$security"
    hash="$(printf '%s\n' "$recipe" "$DPKG_EXCLUDES" | sha256sum | cut -c1-16)"
    label="$("${PODMAN[@]}" image inspect --format '{{index .Labels "otlp-ingest.base-recipe"}}' "$BASE" 2>/dev/null || true)"
    if [[ "$label" == "$hash" ]]; then
        echo "build-image: base $BASE present (recipe $hash)"
        return
    fi
    mkdir -p "$CACHE"
    tarball="$CACHE/base-$SUITE-$hash.tar"
    if [[ ! -s "$tarball" ]]; then
        [[ "$(id -u)" == 0 ]] || die "making the base $BASE needs root (debootstrap); run as root, or pass --python-image" 2
        command -v debootstrap >/dev/null 2>&1 || [[ -x /usr/sbin/debootstrap ]] \
            || die "required tool 'debootstrap' not found; install it (scripts/install-test-tools.sh)" 2
        echo "build-image: making $BASE with debootstrap from $mirror ($recipe)"
        local started="$SECONDS"
        ROOTFS="$(mktemp -d /var/tmp/otlp-ingest-base.XXXXXX)"
        chmod 755 "$ROOTFS"  # it becomes the image's / (mktemp made it 0700)
        PATH="$PATH:/usr/sbin:/sbin" debootstrap --variant=minbase --include="$PACKAGES" \
            "$SUITE" "$ROOTFS" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
            || {
                tail -n 30 "$WORK/debootstrap.log" "$ROOTFS/debootstrap/debootstrap.log" >&2 || true
                die "debootstrap failed (logs above)"
            }
        # apt inside the image (the Dockerfile's build stage installs gcc) uses the same mirror.
        {
            printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "$mirror" "$SUITE" "$SUITE"
            printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
            if [[ -n "$security" ]]; then
                printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$security" "$SUITE"
                printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
            fi
        } >"$ROOTFS/etc/apt/sources.list.d/debian.sources"
        rm -f "$ROOTFS/etc/apt/sources.list"
        # debootstrap installs the suite's release; the updates and security suites bring it to
        # where the official images are (rebuilt with every Debian update).
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
            chroot "$ROOTFS" sh -c 'apt-get update -qq -o Acquire::Languages=none \
                && apt-get upgrade -y -qq -o Dpkg::Options::=--force-unsafe-io' >>"$WORK/debootstrap.log" 2>&1 \
            || { tail -n 30 "$WORK/debootstrap.log" >&2; die "upgrading the base failed (log above)"; }
        echo "build-image: debootstrap and upgrade took $((SECONDS - started)) s"
        printf '%s\n' "$DPKG_EXCLUDES" >"$ROOTFS/etc/dpkg/dpkg.cfg.d/otlp-ingest-slim"
        find "$ROOTFS/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
        find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
        rm -rf "$ROOTFS"/usr/share/{man,groff,info,lintian,linda,locale}/*
        # What a container image does not need: downloaded packages, package lists, logs.
        rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/* \
            "$ROOTFS"/var/log/* "$ROOTFS"/var/cache/debconf/*-old
        tar --numeric-owner -C "$ROOTFS" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
            -cf "$tarball.tmp" .
        rm -f "$CACHE"/base-"$SUITE"-*.tar  # an older recipe's
        mv "$tarball.tmp" "$tarball"
        echo "build-image: root file system cached in $tarball after $((SECONDS - started)) s"
    else
        echo "build-image: importing $BASE from $tarball"
    fi
    "${PODMAN[@]}" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL otlp-ingest.base-recipe=$hash" \
        --change 'CMD ["python3"]' \
        "$tarball" "$BASE" >/dev/null
}

# pip's settings for the build: a pip.conf mounted at /etc/pip.conf plus the CA bundle it names,
# both read-only in the RUN steps only.
pip_value() {
    local key="$1" scope
    for scope in ':env:' install global; do
        awk -v want="$scope.$key" 'index($0, want "=") == 1 {
                v = substr($0, length(want) + 2); gsub(/^'\''|'\''$/, "", v); print v; exit
            }' "$WORK/pip-config"
    done | head -n 1
}

PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY="$(command -v python3 || true)"
if [[ -n "$PY" ]]; then "$PY" -m pip config list >"$WORK/pip-config" 2>/dev/null || true; fi
touch "$WORK/pip-config"
BUNDLE=""
for candidate in "${PIP_CERT:-}" "$(pip_value cert)" "${REQUESTS_CA_BUNDLE:-}" "${CURL_CA_BUNDLE:-}" \
    "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
    if [[ -n "$candidate" && -f "$candidate" ]]; then BUNDLE="$candidate"; break; fi
done
MOUNTS=(-v "$WORK/pip.conf:/etc/pip.conf:ro")
{
    echo "[global]"
    if [[ -n "$BUNDLE" ]]; then
        echo "cert = $BUNDLE"
        MOUNTS+=(-v "$BUNDLE:$BUNDLE:ro")
    fi
    for key in index-url extra-index-url; do
        # A file:// index is a directory of this machine, not of the build.
        urls="$(pip_value "$key" | tr ' ' '\n' | grep -E '^https?://' | tr '\n' ' ' || true)"
        if [[ -n "${urls// /}" ]]; then echo "$key = ${urls% }"; fi
    done
    value="$(pip_value trusted-host)"
    if [[ -n "$value" ]]; then echo "trusted-host = $value"; fi
    value="$(pip_value timeout)"
    value="${value:-$(pip_value default-timeout)}"  # two names of one pip option
    if [[ -n "$value" ]]; then echo "timeout = $value"; fi
} >"$WORK/pip.conf"
# The names only: an index URL may hold a token.
echo "build-image: pip in the build gets: $(sed -n 's/ = .*//p' "$WORK/pip.conf" | tr '\n' ' ')"

PULL=()
if [[ -z "$PYTHON_IMAGE" ]]; then
    make_base
    PYTHON_IMAGE="$BASE"
    PULL=(--pull=never)  # the local base: nothing to fetch, and no registry to ask
fi

echo "build-image: building $TAG on $PYTHON_IMAGE"
started="$SECONDS"
BUILD=("${PODMAN[@]}" build --format docker --network host "${ULIMITS[@]}" "${MOUNTS[@]}" "${PULL[@]}"
    --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" --file "$ROOT/Dockerfile")
# The build stage gets a tag of its own: podman keeps every step as an image (the cache of the next
# build), and a tagged stage keeps its steps out of the prune below.
"${BUILD[@]}" --target build --tag "$BUILD_STAGE_TAG" "$ROOT" || die "podman build failed (build stage)"
"${BUILD[@]}" --tag "$TAG" "$ROOT" || die "podman build failed"
if [[ "$PYTHON_IMAGE" == "$BASE" ]]; then
    # Each change of the sources leaves the previous build's images untagged (~500 MB): remove
    # those, and only those made from our base (it labels everything built on it).
    "${PODMAN[@]}" image prune --force --filter label=otlp-ingest.base-recipe >/dev/null
fi
echo "build-image: built $TAG in $((SECONDS - started)) s, $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$TAG") bytes"
