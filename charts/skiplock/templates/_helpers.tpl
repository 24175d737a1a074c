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

{{/*
Percent-encoding (RFC 3986) of a string for any part of a URL: every byte outside the
unreserved set A-Z a-z 0-9 - . _ ~ becomes %XX. `urlquery` is form encoding (a space becomes
"+", which libpq does not decode in the userinfo), so it is not used here.
*/}}
{{- define "skiplock.percentEncode" -}}
{{- range $c := regexSplit "" . -1 }}
{{- if regexMatch "^[A-Za-z0-9._~-]$" $c }}{{ $c }}
{{- else }}{{ range $h := regexFindAll ".." (printf "%X" $c) -1 }}%{{ $h }}{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The dev database URL; user, password and database are percent-encoded. */}}
{{- define "skiplock.postgresUrl" -}}
{{- $a := .Values.postgres.auth }}
{{- printf "postgresql://%s:%s@%s.%s.svc:5432/%s" (include "skiplock.percentEncode" $a.username) (include "skiplock.percentEncode" $a.password) (include "skiplock.postgresName" .) .Release.Namespace (include "skiplock.percentEncode" $a.database) }}
{{- end }}

{{- define "skiplock.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) }}
{{- end }}

{{- define "skiplock.leaseName" -}}
{{- default (include "skiplock.operatorName" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/* The labels that select the operator's pods. */}}
{{- define "skiplock.operatorSelectorLabels" -}}
{{ include "skiplock.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* True ("true") when the fixed uid/gid must go: OpenShift's restricted-v2 assigns its own. */}}
{{- define "skiplock.dropFixedIds" -}}
{{- $mode := .Values.compatibility.openshift.adaptSecurityContext }}
{{- if or (eq $mode "force") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "security.openshift.io/v1")) }}true{{ end }}
{{- end }}

{{/*
A pod securityContext: the given map, without runAsUser/runAsGroup/fsGroup when the fixed
ids must go. Called with (dict "ctx" $ "sc" MAP).
*/}}
{{- define "skiplock.podSecurityContext" -}}
{{- $sc := deepCopy .sc }}
{{- if include "skiplock.dropFixedIds" .ctx }}
{{- $sc = omit $sc "runAsUser" "runAsGroup" "fsGroup" }}
{{- end }}
{{- toYaml $sc }}
{{- end }}

{{/* The same for a container securityContext. */}}
{{- define "skiplock.containerSecurityContext" -}}
{{- $sc := deepCopy .sc }}
{{- if include "skiplock.dropFixedIds" .ctx }}
{{- $sc = omit $sc "runAsUser" "runAsGroup" }}
{{- end }}
{{- toYaml $sc }}
{{- end }}

{{/*
The hardened security contexts of the chart's short-lived pods (hook, test, prune), derived from
the operator's values so one OpenShift or uid change applies everywhere.
*/}}
{{- define "skiplock.jobPodSpecSecurity" -}}
securityContext:
  {{- include "skiplock.podSecurityContext" (dict "ctx" . "sc" .Values.operator.podSecurityContext) | nindent 2 }}
{{- end }}

{{/* The database Secret the prune CronJob reads: prune.database, jobQueue.database, dev Postgres. */}}
{{- define "skiplock.pruneSecret" -}}
{{- if .Values.prune.database.secretName }}
{{- .Values.prune.database.secretName }}
{{- else if .Values.jobQueue.database.secretName }}
{{- .Values.jobQueue.database.secretName }}
{{- else if .Values.postgres.enabled }}
{{- include "skiplock.postgresName" . }}
{{- end }}
{{- end }}
