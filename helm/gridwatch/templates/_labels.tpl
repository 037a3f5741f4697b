{{/*
The standard app.kubernetes.io/* labels: on every object, selectors, per component, and the client label the NetworkPolicy admits.
*/}}

{{/* Labels on every object. */}}
{{- define "gridwatch.labels" -}}
helm.sh/chart: {{ include "gridwatch.chart" . }}
app.kubernetes.io/name: {{ include "gridwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gridwatch
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component ("backend" or "ui"): immutable once a Deployment exists, so kept minimal. */}}
{{- define "gridwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gridwatch.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "gridwatch.componentLabels" -}}
{{ include "gridwatch.labels" .context }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Label of the pods allowed through the backend's NetworkPolicy besides the UI and Prometheus (helm test pods). */}}
{{- define "gridwatch.clientLabel" -}}
{{ include "gridwatch.fullname" . }}-backend-client: "true"
{{- end -}}
