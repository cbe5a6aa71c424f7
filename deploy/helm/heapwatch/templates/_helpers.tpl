{{/* The base name of every object: the release name, with "heapwatch" added when it lacks it. */}}
{{- define "heapwatch.fullname" -}}
{{- if contains "heapwatch" .Release.Name -}}
{{- .Release.Name | trunc 55 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-heapwatch" .Release.Name | trunc 55 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "heapwatch.webhookName" -}}
{{- printf "%s-webhook" (include "heapwatch.fullname" .) -}}
{{- end -}}

{{- define "heapwatch.selectorLabels" -}}
app.kubernetes.io/name: heapwatch-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "heapwatch.labels" -}}
{{ include "heapwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* An image reference from {repository, tag, digest}; the digest wins. */}}
{{- define "heapwatch.image" -}}
{{- $img := index . 0 -}}{{- $chart := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}
