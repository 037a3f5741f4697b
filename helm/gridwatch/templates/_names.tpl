{{/*
Names of the chart's objects and the addresses between them, in the style of `helm create` and the Bitnami charts.
*/}}

{{- define "gridwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release-scoped base name: "gridwatch" for a release called gridwatch, else "<release>-gridwatch". */}}
{{- define "gridwatch.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "gridwatch.backend.fullname" -}}
{{- printf "%s-backend" (include "gridwatch.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gridwatch.ui.fullname" -}}
{{- printf "%s-ui" (include "gridwatch.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The training Job (and the NetworkPolicy of the training pods). */}}
{{- define "gridwatch.training.fullname" -}}
{{- printf "%s-train" (include "gridwatch.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The training CronJob: at most 52 characters, since the Jobs it creates append 11 to its name. */}}
{{- define "gridwatch.training.cronJobName" -}}
{{- printf "%s-train-cron" (include "gridwatch.fullname" .) | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* The models PersistentVolumeClaim (backend.modelStorage.persistence): the user's, or the one the chart creates. */}}
{{- define "gridwatch.backend.modelsClaimName" -}}
{{- .Values.backend.modelStorage.persistence.existingClaim | default (printf "%s-models" (include "gridwatch.backend.fullname" .)) -}}
{{- end -}}

{{- define "gridwatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gridwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gridwatch.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The in-cluster URL of the API, which the UI and the test pods call. */}}
{{- define "gridwatch.backend.url" -}}
{{- printf "http://%s.%s.svc:%v" (include "gridwatch.backend.fullname" .) .Release.Namespace .Values.backend.service.port -}}
{{- end -}}
