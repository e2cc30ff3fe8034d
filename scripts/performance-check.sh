#!/usr/bin/env bash
# performance-check.sh: throughput, error ratio and p95 export latency of otlp-ingest, from the
# Prometheus HTTP API (the same series the alerts and the dashboard use).
set -euo pipefail

PROM_URL="${PROMETHEUS_URL:-http://127.0.0.1:9090}"
JOB="otlp-ingest"
WINDOW="5m"
MAX_ERROR_RATIO="0.05"
MAX_P95="1"
MIN_THROUGHPUT="0"
TIMEOUT=10

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--prometheus URL] [--job NAME] [--window DURATION]
                        [--max-error-ratio R] [--max-p95 SECONDS] [--min-throughput ITEMS_PER_S]

Queries Prometheus for the otlp-ingest job over --window (default ${WINDOW}) and prints:
  throughput      items/s accepted (otlp_receiver_accepted_*_total) and sent (otlp_exporter_sent_*_total)
  error ratio     export failed / (sent + failed) (otlp_exporter_send_failed_*_total)
  refusal ratio   refused / (accepted + refused) (otlp_receiver_refused_*_total)
  p95 latency     export (otlp_export_duration_seconds) and ack (otlp_receiver_request_duration_seconds)
and fails when the error ratio exceeds --max-error-ratio (${MAX_ERROR_RATIO}), the export p95
exceeds --max-p95 seconds (${MAX_P95}) or throughput is below --min-throughput (${MIN_THROUGHPUT}).

Options:
  --prometheus URL   Prometheus base URL (default \$PROMETHEUS_URL or http://127.0.0.1:9090)
  --job NAME         scrape job label (default ${JOB})
  --timeout SECONDS  per-query timeout (default ${TIMEOUT})
  -h, --help         show this help

Exit status: 0 within limits, 1 a limit exceeded or Prometheus unreachable, 2 usage/missing tool.
USAGE
}

die() { echo "performance-check: $*" >&2; exit "${2:-1}"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --prometheus) PROM_URL="${2:?--prometheus needs a URL}"; shift 2 ;;
        --job) JOB="${2:?--job needs a name}"; shift 2 ;;
        --window) WINDOW="${2:?--window needs a duration}"; shift 2 ;;
        --max-error-ratio) MAX_ERROR_RATIO="${2:?}"; shift 2 ;;
        --max-p95) MAX_P95="${2:?}"; shift 2 ;;
        --min-throughput) MIN_THROUGHPUT="${2:?}"; shift 2 ;;
        --timeout) TIMEOUT="${2:?}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "performance-check: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

for tool in curl jq awk; do
    command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' not found in PATH; install it" 2
done
PROM_URL="${PROM_URL%/}"

curl -fsS --max-time "$TIMEOUT" -o /dev/null "${PROM_URL}/-/ready" 2>/dev/null \
    || die "cannot reach Prometheus at ${PROM_URL} (connection failed or timed out after ${TIMEOUT}s); pass --prometheus URL or set PROMETHEUS_URL"

# query EXPR -> prints the first sample's value, or "NaN" when the result is empty.
query() {
    local body
    body="$(curl -sS --max-time "$TIMEOUT" --get --data-urlencode "query=$1" "${PROM_URL}/api/v1/query")" \
        || die "query failed: $1"
    jq -e '.status == "success"' >/dev/null <<<"$body" || die "Prometheus rejected query: $1: $(jq -r '.error // .' <<<"$body")"
    jq -r '.data.result[0].value[1] // "NaN"' <<<"$body"
}

sel="job=\"${JOB}\""
sum_rate() { # FAMILY -> PromQL summing FAMILY_{spans,metric_points,log_records}_total
    local f="$1" parts=() noun
    for noun in spans metric_points log_records; do
        parts+=("sum(rate(${f}_${noun}_total{${sel}}[${WINDOW}]))")
    done
    # `or vector(0)` per signal: a signal that never had traffic must not blank the sum.
    printf '(%s or vector(0)) + (%s or vector(0)) + (%s or vector(0))' "${parts[@]}"
}

accepted="$(query "$(sum_rate otlp_receiver_accepted)")"
refused="$(query "$(sum_rate otlp_receiver_refused)")"
sent="$(query "$(sum_rate otlp_exporter_sent)")"
failed="$(query "$(sum_rate otlp_exporter_send_failed)")"
p95_export="$(query "histogram_quantile(0.95, sum by (le) (rate(otlp_export_duration_seconds_bucket{${sel}}[${WINDOW}])))")"
p95_ack="$(query "histogram_quantile(0.95, sum by (le) (rate(otlp_receiver_request_duration_seconds_bucket{${sel}}[${WINDOW}])))")"
targets_up="$(query "sum(up{${sel}})")"

awk -v acc="$accepted" -v ref="$refused" -v sent="$sent" -v fail="$failed" \
    -v p95e="$p95_export" -v p95a="$p95_ack" -v up="$targets_up" -v window="$WINDOW" \
    -v max_err="$MAX_ERROR_RATIO" -v max_p95="$MAX_P95" -v min_tp="$MIN_THROUGHPUT" '
function isnum(x) { return x ~ /^[-+]?[0-9.]+([eE][-+]?[0-9]+)?$/ }
BEGIN {
    bad = 0
    if (!isnum(up) || up + 0 == 0) { print "FAIL  no otlp-ingest target is up"; bad = 1 }
    else printf "OK    targets up: %d\n", up
    printf "INFO  throughput (%s): accepted %.1f items/s, sent %.1f items/s\n", window, acc, sent
    if (acc + 0 < min_tp + 0) { printf "FAIL  accepted %.1f items/s < %s\n", acc, min_tp; bad = 1 }
    err = (sent + fail > 0) ? fail / (sent + fail) : 0
    refr = (acc + ref > 0) ? ref / (acc + ref) : 0
    printf "%s error ratio %.4f (limit %s)\n", (err > max_err + 0) ? "FAIL " : "OK   ", err, max_err
    if (err > max_err + 0) bad = 1
    printf "INFO  refusal ratio %.4f\n", refr
    if (isnum(p95e)) {
        printf "%s p95 export latency %.3fs (limit %ss)\n", (p95e > max_p95 + 0) ? "FAIL " : "OK   ", p95e, max_p95
        if (p95e > max_p95 + 0) bad = 1
    } else print "INFO  p95 export latency: no exports in the window"
    if (isnum(p95a)) printf "INFO  p95 ack latency %.4fs\n", p95a
    exit bad
}'
