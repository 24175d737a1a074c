{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "skiplock.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: the release name, plus the chart name unless already in it. */}}
{{- define "skiplock.fullname" -}}
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

{{- define "skiplock.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "skiplock.labels" -}}
helm.sh/chart: {{ include "skiplock.chart" . }}
{{ include "skiplock.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: skiplock
{{- end }}

{{- define "skiplock.selectorLabels" -}}
app.kubernetes.io/name: {{ include "skiplock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "skiplock.operatorName" -}}
{{- printf "%s-operator" (include "skiplock.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "skiplock.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "skiplock.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "skiplock.postgresName" -}}
{{- printf "%s-postgres" (include "skiplock.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The dev database URL; the password is URL-encoded so any character is safe. */}}
{{- define "skiplock.postgresUrl" -}}
{{- $a := .Values.postgres.auth }}
{{- printf "postgresql://%s:%s@%s.%s.svc:5432/%s" $a.username (urlquery $a.password) (include "skiplock.postgresName" .) .Release.Namespace $a.database }}
{{- end }}

{{- define "skiplock.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) }}
{{- end }}
