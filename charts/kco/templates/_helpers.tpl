{{- define "kco.name" -}}kco{{- end -}}

{{- define "kco.fullname" -}}
{{- if contains "kco" .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- else -}}{{ printf "%s-kco" .Release.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "kco.labels" -}}
app.kubernetes.io/name: kco
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kco.selectorLabels" -}}
app.kubernetes.io/name: kco
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kco.webhookService" -}}{{ include "kco.fullname" . }}-webhook{{- end -}}
{{- define "kco.webhookSecret" -}}{{ include "kco.fullname" . }}-webhook-tls{{- end -}}
{{- define "kco.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
