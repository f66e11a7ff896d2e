{{/* Names and labels shared by the templates. */}}
{{- define "polyserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "polyserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: polyserve
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: polyserve
{{- end -}}

{{- define "polyserve.selector" -}}
app.kubernetes.io/name: polyserve
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "polyserve.operatorName" -}}{{ include "polyserve.fullname" . }}-operator{{- end -}}
{{- define "polyserve.routerName" -}}{{ include "polyserve.fullname" . }}-router{{- end -}}

{{- define "polyserve.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces -}}
{{- toJson .Values.operator.watchNamespaces -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{- define "polyserve.routerNamespace" -}}
{{- default .Release.Namespace .Values.router.namespace -}}
{{- end -}}

{{- define "polyserve.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "polyserve.fullname" .)) .Values.apiKeys.existingSecret -}}
{{- end -}}
