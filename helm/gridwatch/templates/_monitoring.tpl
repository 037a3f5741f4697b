{{/*
The monitoring stack the chart plugs into: Prometheus' job name, release, namespace and URL.
*/}}

{{/*
The job label of the backend's series. Fixed, not a value: every rule of prometheus-rules/ and every dashboard of
grafana-dashboards/ selects job="gridwatch" (so do docker/prometheus/prometheus.yml and the helm test), and a
different name would leave them all silently blind.
*/}}
{{- define "gridwatch.jobName" -}}
gridwatch
{{- end -}}

{{/* The `release` label kube-prometheus-stack's Prometheus selects: this release's, or the one monitoring.prometheusRelease names. */}}
{{- define "gridwatch.prometheusRelease" -}}
{{- default .Release.Name .Values.monitoring.prometheusRelease -}}
{{- end -}}

{{/* "true" when another release's Prometheus monitors this one (a second release); empty otherwise. */}}
{{- define "gridwatch.sharedPrometheus" -}}
{{- if and .Values.monitoring.prometheusRelease (ne .Values.monitoring.prometheusRelease .Release.Name) -}}
true
{{- end -}}
{{- end -}}

{{/* The namespace the NetworkPolicy admits Prometheus from: the value, else this release's (the bundled stack's). */}}
{{- define "gridwatch.prometheusNamespace" -}}
{{- $stack := index .Values "kube-prometheus-stack" -}}
{{- if .Values.networkPolicy.prometheus.namespace -}}
{{- .Values.networkPolicy.prometheus.namespace -}}
{{- else if $stack.enabled -}}
{{- .Release.Namespace -}}
{{- else -}}
{{- fail "networkPolicy.prometheus.namespace is required when kube-prometheus-stack is off and monitoring.serviceMonitor is on: name the namespace your Prometheus runs in (the backend's NetworkPolicy admits Prometheus from that namespace only), or set networkPolicy.enabled=false" -}}
{{- end -}}
{{- end -}}

{{/* Where kube-prometheus-stack's Prometheus answers: its Service is "<fullnameOverride>-prometheus". */}}
{{- define "gridwatch.prometheus.url" -}}
{{- if .Values.tests.prometheusUrl -}}
{{- .Values.tests.prometheusUrl -}}
{{- else -}}
{{- $stack := index .Values "kube-prometheus-stack" -}}
{{- printf "http://%s-prometheus.%s.svc:9090" $stack.fullnameOverride .Release.Namespace -}}
{{- end -}}
{{- end -}}
