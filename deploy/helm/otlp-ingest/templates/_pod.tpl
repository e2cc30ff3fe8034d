{{/*
The pod template, shared by the Deployment and the durable StatefulSet so the two cannot drift
(the kustomize durable overlay copies it with `replacements` for the same reason).
*/}}
{{- define "otlp-ingest.podTemplate" -}}
metadata:
  labels:
    {{- include "otlp-ingest.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # A changed ConfigMap changes the pod template, so `helm upgrade` rolls the pods (the
    # server reads its settings at start-up).
    checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  # Above OTLP_SHUTDOWN_TIMEOUT: SIGTERM -> receivers stop, exporters drain the rings, the
  # supervisor exits; the kubelet only SIGKILLs after this.
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    fsGroup: 10001
    seccompProfile:
      type: RuntimeDefault
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: {{ .Values.topologySpread.zone }}
      labelSelector:
        matchLabels:
          {{- include "otlp-ingest.selectorLabels" . | nindent 10 }}
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: {{ .Values.topologySpread.hostname }}
      labelSelector:
        matchLabels:
          {{- include "otlp-ingest.selectorLabels" . | nindent 10 }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: otlp-ingest
      image: "{{ .Values.image.repository }}:{{ include "otlp-ingest.imageTag" . }}"
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["serve"]
      {{- $tlsDir := include "otlp-ingest.tlsDir" . }}
      {{- if or .Values.tls.enabled .Values.auth.enabled .Values.extraEnv }}
      env:
        {{- if .Values.tls.enabled }}
        # TLS from the mounted Secret. Here and not in the ConfigMap: the paths belong to the
        # volume mount below. Files are read when a worker/exporter starts, so a renewed
        # certificate takes effect on the next rollout or SIGHUP (docs/operations.md "mTLS").
        - name: OTLP_TLS_CERT_FILE
          value: {{ $tlsDir }}/tls.crt
        - name: OTLP_TLS_KEY_FILE
          value: {{ $tlsDir }}/tls.key
        {{- if .Values.tls.clientAuth }}
        - name: OTLP_TLS_CLIENT_CA_FILE
          value: {{ $tlsDir }}/ca.crt
        {{- end }}
        {{- if .Values.tls.exporter }}
        - name: OTLP_EXPORT_CA_FILE
          value: {{ $tlsDir }}/ca.crt
        - name: OTLP_EXPORT_CERT_FILE
          value: {{ $tlsDir }}/tls.crt
        - name: OTLP_EXPORT_KEY_FILE
          value: {{ $tlsDir }}/tls.key
        {{- end }}
        {{- end }}
        {{- if .Values.auth.enabled }}
        # Bearer tokens required on both OTLP ports. Re-read when the kubelet updates the mounted
        # file: no restart for a token rotation (docs/operations.md "Authentication").
        - name: OTLP_AUTH_TOKENS_FILE
          value: {{ .Values.auth.mountPath }}/tokens
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      envFrom:
        - configMapRef:
            name: {{ include "otlp-ingest.fullname" . }}
      ports:
        - name: otlp-grpc
          containerPort: {{ .Values.service.ports.grpc }}
          protocol: TCP
        - name: otlp-http
          containerPort: {{ .Values.service.ports.http }}
          protocol: TCP
        - name: metrics
          containerPort: {{ .Values.service.ports.metrics }}
          protocol: TCP
      startupProbe:
        httpGet:
          path: /health
          port: metrics
        periodSeconds: 2
        failureThreshold: 30
      livenessProbe:
        httpGet:
          path: /health
          port: metrics
        periodSeconds: 10
        timeoutSeconds: 2
        failureThreshold: 3
      readinessProbe:
        # 503 while workers/exporters start and while draining: the Service stops routing
        # new connections to a pod that is shutting down.
        httpGet:
          path: /ready
          port: metrics
        periodSeconds: 5
        timeoutSeconds: 2
        failureThreshold: 2
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        privileged: false
        capabilities:
          drop: ["ALL"]
      volumeMounts:
        - name: tmp  # prometheus multiprocess dir and other temp files
          mountPath: /tmp
        - name: data  # file sink (OTLP_DATA_DIR) when no backend endpoint is set
          mountPath: {{ include "otlp-ingest.dataDir" . }}
        - name: shm  # shared-memory rings, one per worker
          mountPath: /dev/shm
        {{- if .Values.tls.enabled }}
        - name: tls
          mountPath: {{ $tlsDir }}
          readOnly: true
        {{- end }}
        {{- if .Values.auth.enabled }}
        # A directory mount, never subPath: the kubelet does not update subPath mounts.
        - name: auth
          mountPath: {{ .Values.auth.mountPath }}
          readOnly: true
        {{- end }}
        {{- if .Values.durable.enabled }}
        - name: queue  # the StatefulSet's volumeClaimTemplates
          mountPath: {{ include "otlp-ingest.queueDir" . }}
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ .Values.emptyDir.tmp }}
    - name: data
      emptyDir:
        sizeLimit: {{ .Values.emptyDir.data }}
    - name: shm
      emptyDir:
        medium: Memory
        sizeLimit: {{ .Values.emptyDir.shm }}
    {{- if .Values.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ include "otlp-ingest.tlsSecretName" . }}
        # The pod's fsGroup owns the files.
        defaultMode: 0440
    {{- end }}
    {{- if .Values.auth.enabled }}
    - name: auth
      secret:
        secretName: {{ include "otlp-ingest.authSecretName" . }}
        defaultMode: 0440
        {{- if and .Values.auth.existingSecret (ne .Values.auth.existingSecretKey "tokens") }}
        # The server's file is always <mountPath>/tokens; items still update in place.
        items:
          - key: {{ .Values.auth.existingSecretKey }}
            path: tokens
        {{- end }}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}
