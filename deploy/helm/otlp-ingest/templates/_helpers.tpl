{{/* Name of the chart, the value of app.kubernetes.io/name (the alerts' job label). */}}
{{- define "otlp-ingest.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of every object: the release name when it already contains the chart name. */}}
{{- define "otlp-ingest.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Pods of this release: the Deployment/StatefulSet selector, Service, PDB, NetworkPolicy. */}}
{{- define "otlp-ingest.selectorLabels" -}}
app.kubernetes.io/name: {{ include "otlp-ingest.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. part-of as in the kustomize base. */}}
{{- define "otlp-ingest.labels" -}}
{{ include "otlp-ingest.selectorLabels" . }}
app.kubernetes.io/part-of: observability
app.kubernetes.io/version: {{ include "otlp-ingest.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* metadata: name, namespace and labels of every object. */}}
{{- define "otlp-ingest.metadata" -}}
name: {{ include "otlp-ingest.fullname" . }}
namespace: {{ .Release.Namespace }}
labels:
  {{- include "otlp-ingest.labels" . | nindent 2 }}
{{- end }}

{{- define "otlp-ingest.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "otlp-ingest.tlsSecretName" -}}
{{- .Values.tls.secretName | default (printf "%s-tls" (include "otlp-ingest.fullname" .)) }}
{{- end }}

{{/* The Secret holding the bearer tokens: the operator's, or the one secret-auth.yaml creates. */}}
{{- define "otlp-ingest.authSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "otlp-ingest.fullname" .)) }}
{{- end }}

{{/* "true" when the chart's tokens Secret holds the placeholder files/auth-tokens (no token). */}}
{{- define "otlp-ingest.authPlaceholder" -}}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) (not .Values.auth.tokens) }}true{{ end }}
{{- end }}

{{/* Where the server keeps the file sink and the durable queue: the volumes below mount there. */}}
{{- define "otlp-ingest.dataDir" -}}/var/lib/otlp-ingest{{- end }}
{{- define "otlp-ingest.queueDir" -}}/var/lib/otlp-queue{{- end }}
{{- define "otlp-ingest.tlsDir" -}}/etc/otlp-ingest/tls{{- end }}

{{/* Refuse combinations that render fine but cannot work, with what to do instead. */}}
{{- define "otlp-ingest.checks" -}}
{{- if and .Values.auth.existingSecret .Values.auth.tokens }}
{{- fail "auth.existingSecret and auth.tokens are both set: the chart would ignore the tokens; give one (the tokens in your Secret, or auth.tokens for a Secret the chart creates)" }}
{{- end }}
{{- if .Values.ingress.enabled }}
{{- if not .Values.ingress.hosts }}
{{- fail "ingress.enabled needs ingress.hosts (the names clients connect to)" }}
{{- end }}
{{- if not .Values.ingress.tls }}
{{- fail "ingress.enabled needs ingress.tls: nginx speaks HTTP/2, and so gRPC, to clients only over TLS" }}
{{- end }}
{{- if and .Values.tls.enabled .Values.tls.clientAuth }}
{{- fail "ingress.enabled with tls.clientAuth: ingress-nginx presents no client certificate to a gRPC (GRPCS) backend (kubernetes/ingress-nginx#6893), so every gRPC request would fail its handshake; set tls.clientAuth=false (verify clients at the ingress instead, nginx.ingress.kubernetes.io/auth-tls-secret) or leave the ingress off" }}
{{- end }}
{{- end }}
{{- end }}
