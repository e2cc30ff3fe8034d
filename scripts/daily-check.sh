#!/usr/bin/env bash
# daily-check.sh: the once-a-day look at otlp-ingest: instance health, the last 24h of
# performance, firing alerts, restarts, and (with --namespace) the Kubernetes objects.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ADMIN_URL="${ADMIN_URL:-http://127.0.0.1:8888}"
PROM_URL="${PROMETHEUS_URL:-http://127.0.0.1:9090}"
NAMESPACE=""
WINDOW="24h"
TIMEOUT=10

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--admin URL] [--prometheus URL] [--namespace NS] [--window DURATION]

Runs, in order, and reports every failure (it does not stop at the first):
  1. health-check.sh against --admin (skipped with --admin none)
  2. performance-check.sh against --prometheus over --window (default ${WINDOW})
  3. alerts of the otlp-ingest rules currently firing (Prometheus /api/v1/alerts)
  4. child-process restarts over --window (otlp_process_restarts_total)
  5. with --namespace: kubectl get deploy/hpa/pdb/pods and recent warning events

Options:
  --admin URL        admin base URL of one instance (default \$ADMIN_URL or http://127.0.0.1:8888)
  --prometheus URL   Prometheus base URL (default \$PROMETHEUS_URL or http://127.0.0.1:9090)
  --namespace NS     also inspect the Kubernetes namespace NS (needs kubectl)
  --window DURATION  look-back window (default ${WINDOW})
  -h, --help         show this help

Exit status: 0 all checks passed, 1 a check failed or an endpoint was unreachable, 2 usage/missing tool.
USAGE
}

die() { echo "daily-check: $*" >&2; exit "${2:-1}"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --admin) ADMIN_URL="${2:?--admin needs a URL}"; shift 2 ;;
        --prometheus) PROM_URL="${2:?--prometheus needs a URL}"; shift 2 ;;
        --namespace) NAMESPACE="${2:?--namespace needs a name}"; shift 2 ;;
        --window) WINDOW="${2:?--window needs a duration}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "daily-check: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

for tool in curl jq; do
    command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' not found in PATH; install it" 2
done
if [[ -n "$NAMESPACE" ]]; then
    command -v kubectl >/dev/null 2>&1 || die "--namespace needs kubectl, which is not in PATH" 2
fi
PROM_URL="${PROM_URL%/}"

failures=()
section() { printf '\n== %s\n' "$*"; }

if [[ "$ADMIN_URL" != "none" ]]; then
    section "instance health (${ADMIN_URL})"
    "${HERE}/health-check.sh" --admin "$ADMIN_URL" || failures+=("health-check")
fi

section "performance over ${WINDOW} (${PROM_URL})"
if ! curl -fsS --max-time "$TIMEOUT" -o /dev/null "${PROM_URL}/-/ready" 2>/dev/null; then
    echo "daily-check: cannot reach Prometheus at ${PROM_URL}; pass --prometheus URL or set PROMETHEUS_URL" >&2
    failures+=("prometheus unreachable")
else
    "${HERE}/performance-check.sh" --prometheus "$PROM_URL" --window "$WINDOW" || failures+=("performance-check")

    section "firing alerts"
    firing="$(curl -fsS --max-time "$TIMEOUT" "${PROM_URL}/api/v1/alerts" \
        | jq -r '.data.alerts[] | select(.state == "firing") | select(.labels.alertname | startswith("OtlpIngest"))
                 | "\(.labels.alertname) \(.labels.severity // "") \(.annotations.summary // "")"')" \
        || die "cannot read alerts from ${PROM_URL}"
    if [[ -n "$firing" ]]; then
        echo "$firing"
        failures+=("alerts firing")
    else
        echo "none"
    fi

    section "child-process restarts over ${WINDOW}"
    restarts="$(curl -fsS --max-time "$TIMEOUT" --get \
        --data-urlencode "query=sum by (role) (increase(otlp_process_restarts_total{job=\"otlp-ingest\"}[${WINDOW}]))" \
        "${PROM_URL}/api/v1/query" | jq -r '.data.result[] | "\(.metric.role) \(.value[1])"')" \
        || die "cannot query restarts from ${PROM_URL}"
    echo "${restarts:-none}"
fi

if [[ -n "$NAMESPACE" ]]; then
    section "kubernetes (${NAMESPACE})"
    if kubectl -n "$NAMESPACE" get deploy/otlp-ingest hpa/otlp-ingest pdb/otlp-ingest 2>&1; then
        kubectl -n "$NAMESPACE" get pods -l app.kubernetes.io/name=otlp-ingest -o wide || failures+=("kubectl pods")
        kubectl -n "$NAMESPACE" get events --field-selector type=Warning --sort-by=.lastTimestamp 2>/dev/null | tail -n 20 || true
    else
        failures+=("kubectl")
    fi
fi

section "summary"
if [[ ${#failures[@]} -eq 0 ]]; then
    echo "all daily checks passed"
    exit 0
fi
echo "FAILED: ${failures[*]}" >&2
exit 1
