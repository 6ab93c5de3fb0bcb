{{- define "fp.name" -}}
{{- printf "%s" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "fp.labels" -}}
app.kubernetes.io/name: fleet-planner
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "fp.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end -}}

{{- define "fp.plannerSelector" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: planner
{{- end -}}

{{- define "fp.tokensSecret" -}}
{{- .Values.planner.existingTokensSecret | default (printf "%s-tokens" (include "fp.name" .)) -}}
{{- end -}}

{{- define "fp.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "fp.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* "true" when the planner's gRPC endpoint serves TLS (cert-manager or an existing Secret), else "". */}}
{{- define "fp.plannerTLS" -}}
{{- $t := .Values.planner.tls -}}
{{- if and .Values.planner.enabled (or $t.certManager.enabled $t.existingSecret) }}true{{ end -}}
{{- end -}}

{{/* The planner's server TLS Secret (tls.crt, tls.key; ca.crt for mutual TLS). */}}
{{- define "fp.plannerTLSSecret" -}}
{{- .Values.planner.tls.existingSecret | default (printf "%s-planner-tls" (include "fp.name" .)) -}}
{{- end -}}
