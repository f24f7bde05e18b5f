{{/* The objects' base name: the release name, or release-chart when the release name lacks the chart's. */}}
{{- define "faultline.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* What selects the pods: faultline's (shared) or the application's (sidecar). */}}
{{- define "faultline.selectorLabels" -}}
{{- if eq .Values.mode "sidecar" -}}
app.kubernetes.io/name: {{ .Values.sidecar.app.name }}
{{- else -}}
app.kubernetes.io/name: faultline
app.kubernetes.io/component: proxy
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "faultline.labels" -}}
app.kubernetes.io/name: {{ if eq .Values.mode "sidecar" }}{{ .Values.sidecar.app.name }}{{ else }}faultline{{ end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "faultline.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "faultline.secretName" -}}
{{- .Values.adminToken.existingSecret | default (printf "%s-admin" (include "faultline.fullname" .)) -}}
{{- end -}}

{{/* faultline.toml: [admin] and the listener from `ports`, then `config`. */}}
{{- define "faultline.config" -}}
# Written by the faultline chart: [admin] and the listener come from the
# chart's `ports`, the rest from its `config` value.

[admin]
# Not loopback: the kubelet's probes, Prometheus and `ctl --fleet` reach
# the pod's IP. Off loopback faultline needs the token, from the Secret.
listen = "0.0.0.0:{{ .Values.ports.admin }}"
token_env = "FAULTLINE_ADMIN_TOKEN"
# A halt is written here (an emptyDir), so a container that restarts while
# the fleet is halted comes back halted instead of rejoining the run.
halt_file = "/var/lib/faultline/halted"

[[listener]]
name = {{ .Values.listenerName | quote }}
{{- if eq .Values.mode "sidecar" }}
# Loopback: only the containers of the pod reach it.
listen = "127.0.0.1:{{ .Values.sidecar.proxyPort }}"
{{- else }}
# Behind the Service, which sends traffic to the pod's IP.
listen = "0.0.0.0:{{ .Values.ports.proxy }}"
{{- end }}

{{ .Values.config }}
{{- end -}}

{{/* The faultline container; in sidecar mode a native sidecar (an init container that keeps running). */}}
{{- define "faultline.container" -}}
- name: faultline
  image: {{ include "faultline.image" . }}
  {{- with .Values.image.pullPolicy }}
  imagePullPolicy: {{ . }}
  {{- end }}
  {{- if eq .Values.mode "sidecar" }}
  restartPolicy: Always
  {{- end }}
  args: ["run", "-c", "/etc/faultline/config/faultline.toml"]
  ports:
    {{- if eq .Values.mode "sidecar" }}
    - name: faultline-admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
    {{- else }}
    - name: proxy
      containerPort: {{ .Values.ports.proxy }}
      protocol: TCP
    - name: admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
    {{- end }}
  env:
    - name: FAULTLINE_ADMIN_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ include "faultline.secretName" . }}
          key: {{ .Values.adminToken.secretKey }}
    - name: FAULTLINE_LOG
      value: {{ .Values.log | quote }}
  {{- $port := ternary "faultline-admin" "admin" (eq .Values.mode "sidecar") }}
  {{- if eq .Values.mode "sidecar" }}
  startupProbe:
    httpGet:
      path: /healthz
      port: {{ $port }}
    periodSeconds: 1
    failureThreshold: 30
  readinessProbe:
    httpGet:
      path: /healthz
      port: {{ $port }}
    periodSeconds: 5
  {{- else }}
  readinessProbe:
    httpGet:
      path: /healthz
      port: {{ $port }}
    periodSeconds: 5
    failureThreshold: 2
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ $port }}
    periodSeconds: 10
    failureThreshold: 6
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- if eq .Values.mode "sidecar" }}
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    {{- end }}
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
    {{- if eq .Values.mode "sidecar" }}
    seccompProfile:
      type: RuntimeDefault
    {{- end }}
  # Directories, never subPath: a subPath copy never updates; a directory
  # follows the kubelet's `..data` swap, which the rules watcher reloads from.
  volumeMounts:
    - name: {{ ternary "faultline-config" "config" (eq .Values.mode "sidecar") }}
      mountPath: /etc/faultline/config
      readOnly: true
    - name: {{ ternary "faultline-rules" "rules" (eq .Values.mode "sidecar") }}
      mountPath: /etc/faultline/rules
      readOnly: true
    # Writable, for admin.halt_file: a halt outlives a container restart
    # (an emptyDir lives as long as the pod).
    - name: {{ ternary "faultline-state" "state" (eq .Values.mode "sidecar") }}
      mountPath: /var/lib/faultline
{{- end -}}
