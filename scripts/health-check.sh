#!/usr/bin/env bash
# health-check.sh: is one otlp-ingest instance alive, ready, and are its processes and queue OK?
# Reads the admin endpoint (/health, /ready, /metrics) directly; no Prometheus needed.
set -euo pipefail

ADMIN_URL="${ADMIN_URL:-http://127.0.0.1:8888}"
TIMEOUT=5
QUEUE_WARN=0.8

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--admin URL] [--timeout SECONDS] [--queue-warn RATIO]

Checks one otlp-ingest instance through its admin port:
  /health    must answer 200 (the supervisor runs)
  /ready     must answer 200 (every worker and exporter ready, not draining)
  /metrics   every otlp_process_up is 1; otlp_exporter_queue_size / otlp_exporter_queue_capacity
             stays below --queue-warn (default ${QUEUE_WARN})

Options:
  --admin URL        admin base URL (default \$ADMIN_URL or http://127.0.0.1:8888)
  --timeout SECONDS  per-request timeout (default ${TIMEOUT})
  --queue-warn R     queue fill ratio that counts as unhealthy (default ${QUEUE_WARN})
  -h, --help         show this help

Exit status: 0 healthy, 1 unhealthy or unreachable, 2 usage error or missing tool.
In Kubernetes: kubectl -n observability port-forward deploy/otlp-ingest 8888 & $(basename "$0")
USAGE
}

die() { echo "health-check: $*" >&2; exit "${2:-1}"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --admin) ADMIN_URL="${2:?--admin needs a URL}"; shift 2 ;;
        --timeout) TIMEOUT="${2:?--timeout needs seconds}"; shift 2 ;;
        --queue-warn) QUEUE_WARN="${2:?--queue-warn needs a ratio}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "health-check: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

for tool in curl awk; do
    command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' not found in PATH; install it" 2
done
ADMIN_URL="${ADMIN_URL%/}"

# fetch PATH -> prints "STATUS BODY"; status 000 when the endpoint cannot be reached.
fetch() {
    local path="$1" out status
    out="$(curl -sS --max-time "$TIMEOUT" -w '\n%{http_code}' "${ADMIN_URL}${path}" 2>/dev/null)" || true
    status="${out##*$'\n'}"
    [[ -n "$status" ]] || status=000
    printf '%s' "$status"
}

status="$(fetch /health)"
if [[ "$status" == "000" ]]; then
    die "cannot reach ${ADMIN_URL}/health (connection failed or timed out after ${TIMEOUT}s); is the server running and the admin port (OTLP_ADMIN_PORT, default 8888) reachable?"
fi
failed=0
if [[ "$status" == "200" ]]; then
    echo "OK    /health 200"
else
    echo "FAIL  /health answered ${status}"; failed=1
fi

status="$(fetch /ready)"
if [[ "$status" == "200" ]]; then
    echo "OK    /ready 200"
else
    echo "FAIL  /ready answered ${status} (starting, draining, or a child is down)"; failed=1
fi

metrics="$(curl -sS --max-time "$TIMEOUT" "${ADMIN_URL}/metrics" 2>/dev/null)" \
    || die "cannot read ${ADMIN_URL}/metrics"

down="$(awk '/^otlp_process_up\{/ && $NF + 0 == 0 { print $1 }' <<<"$metrics")"
procs="$(awk '/^otlp_process_up\{/ { n++ } END { print n + 0 }' <<<"$metrics")"
if [[ -n "$down" ]]; then
    echo "FAIL  processes down: ${down//$'\n'/ }"; failed=1
else
    echo "OK    ${procs} worker/exporter processes up"
fi

# Queue fill per exporter: size / capacity, matched by the exporter label.
fill="$(awk -v warn="$QUEUE_WARN" '
    match($0, /exporter="[^"]*"/) { key = substr($0, RSTART, RLENGTH) }
    /^otlp_exporter_queue_size\{/ { size[key] = $NF }
    /^otlp_exporter_queue_capacity\{/ { cap[key] = $NF }
    END {
        bad = 0
        for (k in cap) {
            r = (cap[k] > 0) ? size[k] / cap[k] : 0
            printf "%s %s/%s (%.0f%%)\n", k, size[k] + 0, cap[k], r * 100
            if (r > warn) bad = 1
        }
        exit bad
    }' <<<"$metrics")" && fill_ok=1 || fill_ok=0
if [[ "$fill_ok" == 1 ]]; then
    echo "OK    queue ${fill//$'\n'/; }"
else
    echo "FAIL  queue above ${QUEUE_WARN}: ${fill//$'\n'/; }"; failed=1
fi

if [[ "$failed" == 0 ]]; then
    echo "healthy: ${ADMIN_URL}"
else
    echo "UNHEALTHY: ${ADMIN_URL}" >&2
fi
exit "$failed"
