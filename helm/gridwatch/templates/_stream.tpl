{{/*
The stream consumer's names and the addresses it needs: the NATS server (bundled or not) and KEDA's view of it.
*/}}

{{- define "gridwatch.stream.fullname" -}}
{{- printf "%s-stream" (include "gridwatch.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The bundled NATS chart's fullname, by that chart's own rule: its fullnameOverride, else <release>-nats (the release alone when it already contains "nats"). */}}
{{- define "gridwatch.nats.fullname" -}}
{{- if .Values.nats.fullnameOverride -}}
{{- .Values.nats.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "nats" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-nats" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The bundled NATS server's client URL; empty while nats.enabled is off. */}}
{{- define "gridwatch.nats.url" -}}
{{- if .Values.nats.enabled -}}
{{- printf "nats://%s.%s.svc:%v" (include "gridwatch.nats.fullname" .) .Release.Namespace (dig "config" "nats" "port" 4222 .Values.nats) -}}
{{- end -}}
{{- end -}}

{{/* NATS_URL of the consumer: stream.config.NATS_URL, else the bundled server's client port. */}}
{{- define "gridwatch.stream.natsUrl" -}}
{{- if .Values.stream.config.NATS_URL -}}
{{- .Values.stream.config.NATS_URL -}}
{{- else if .Values.nats.enabled -}}
{{- include "gridwatch.nats.url" . -}}
{{- else -}}
{{- fail "stream.enabled needs a NATS server: set nats.enabled=true (the bundled one) or stream.config.NATS_URL (yours)" -}}
{{- end -}}
{{- end -}}

{{/* host:port of the NATS monitoring endpoint KEDA's nats-jetstream trigger reads /jsz from. */}}
{{- define "gridwatch.stream.natsMonitoringEndpoint" -}}
{{- if .Values.stream.autoscaling.natsMonitoringEndpoint -}}
{{- .Values.stream.autoscaling.natsMonitoringEndpoint -}}
{{- else if .Values.nats.enabled -}}
{{- printf "%s.%s.svc:8222" (include "gridwatch.nats.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- fail "stream.autoscaling needs the NATS monitoring endpoint KEDA reads the backlog from: set nats.enabled=true or stream.autoscaling.natsMonitoringEndpoint (host:8222)" -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the stream's ScaledObject is rendered: autoscaling on and KEDA's ScaledObject kind known to the cluster.
At the first install of a release that also installs KEDA, its CRDs are not there yet: a ScaledObject in the same
manifest would fail the whole install ("no matches for kind ScaledObject"), so it waits for the next upgrade.
*/}}
{{- define "gridwatch.stream.scaledObject" -}}
{{- if and .Values.stream.enabled .Values.stream.autoscaling.enabled (.Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject") -}}
true
{{- end -}}
{{- end -}}

{{/*
The backend.config variables the consumer shares with the backend: the scoring core's settings
(app/scoring/settings.py; tests/deploy/test_chart_stream.py keeps this list equal to them).
*/}}
{{- define "gridwatch.stream.sharedVariables" -}}
MODEL_DIR MODEL_NAME MODEL_KEEP_VERSIONS TRAIN_IF_MISSING SCORER LOG_LEVEL LOG_FORMAT MODEL_POLL_INTERVAL SHADOW_MODEL_VERSION SHADOW_MAX_SHARE MODEL_AUTO_ROLLBACK MODEL_ROLLBACK_READINGS MODEL_ROLLBACK_RATIO NOMINAL_VOLTAGE NOMINAL_FREQUENCY DRIFT_WINDOW MODEL_MAX_AGE
{{- end -}}

{{/* The stream's environment: the shared model settings of backend.config under stream.config, NATS_URL resolved. */}}
{{- define "gridwatch.stream.env" -}}
{{- $env := dict }}
{{- range $name := splitList " " (include "gridwatch.stream.sharedVariables" .) }}
{{- if hasKey $.Values.backend.config $name }}
{{- $_ := set $env $name (index $.Values.backend.config $name) }}
{{- end }}
{{- end }}
{{- range $name, $value := .Values.stream.config }}
{{- $_ := set $env $name $value }}
{{- end }}
{{- $_ := set $env "NATS_URL" (include "gridwatch.stream.natsUrl" .) }}
{{- toJson $env -}}
{{- end -}}

{{/* The job label of the consumers' series: fixed, every stream alert and the Stream dashboard select it. */}}
{{- define "gridwatch.stream.jobName" -}}
gridwatch-stream
{{- end -}}

{{/* The labels the bundled NATS chart puts on its server pods (its nats.selectorLabels). */}}
{{- define "gridwatch.nats.selectorLabels" -}}
app.kubernetes.io/name: {{ default "nats" .Values.nats.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: nats
{{- end -}}
