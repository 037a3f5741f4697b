{{/*
Names and labels shared by every object, in the style of `helm create` and the Bitnami charts.
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

{{- define "gridwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gridwatch.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag, or repository:tag@digest when a digest is given (pinned, as a registry release should be). */}}
{{- define "gridwatch.image" -}}
{{- $ref := printf "%s:%s" .image.repository (default .context.Chart.AppVersion .image.tag) -}}
{{- if .image.digest -}}
{{- $ref = printf "%s@%s" $ref .image.digest -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* The checkov suppression of an image without a digest, with its reason; nothing once a digest is set. */}}
{{- define "gridwatch.imageDigestCheckovSkip" -}}
{{- if not .image.digest -}}
checkov.io/skip{{ .index }}: CKV_K8S_43=Images built locally and pushed to the kind registry by tag; set image.digest for a registry release
{{- end -}}
{{- end -}}

{{/* The in-cluster URL of the API, which the UI and the test pods call. */}}
{{- define "gridwatch.backend.url" -}}
{{- printf "http://%s.%s.svc:%v" (include "gridwatch.backend.fullname" .) .Release.Namespace .Values.backend.service.port -}}
{{- end -}}

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

{{/* Pod and container security settings shared by every pod of the chart (restricted Pod Security Standard). */}}
{{- define "gridwatch.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "gridwatch.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* checkov suppressions of the helm test pods, each with its reason (tests/deploy/test_security_scan.py runs checkov). */}}
{{- define "gridwatch.testPodCheckovSkips" -}}
checkov.io/skip1: CKV_K8S_8=A helm test pod runs one check to completion; a liveness probe has nothing to guard
checkov.io/skip2: CKV_K8S_9=A helm test pod serves nothing, so there is no readiness to probe
{{- end -}}

{{/*
The API key (values `apiKey`): a Secret mounted read-only as a file, whose path API_KEY_FILE names, in the backend,
the UI and the helm test pod of the API. Never an environment variable from secretKeyRef: those leak into
`kubectl describe`, crash dumps and child processes (checkov CKV_K8S_35).
*/}}
{{- define "gridwatch.apiKey.secretName" -}}
{{- if .Values.apiKey.existingSecret -}}
{{- .Values.apiKey.existingSecret -}}
{{- else -}}
{{- printf "%s-api-key" (include "gridwatch.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* "true" when the chart owns the key's Secret (enabled, a value, no existingSecret); empty otherwise. */}}
{{- define "gridwatch.apiKey.createSecret" -}}
{{- if and .Values.apiKey.enabled (not .Values.apiKey.existingSecret) (trim .Values.apiKey.value) -}}
true
{{- end -}}
{{- end -}}

{{- define "gridwatch.apiKey.mountPath" -}}
/etc/gridwatch/api-key
{{- end -}}

{{/* The value of API_KEY_FILE: the Secret's key is projected to this one fixed file name, whatever secretKey is. */}}
{{- define "gridwatch.apiKey.file" -}}
{{- printf "%s/key" (include "gridwatch.apiKey.mountPath" .) -}}
{{- end -}}

{{/* Entries of a container's volumeMounts and a pod's volumes; empty while the key is off. */}}
{{- define "gridwatch.apiKey.volumeMount" -}}
{{- if .Values.apiKey.enabled -}}
- name: api-key
  mountPath: {{ include "gridwatch.apiKey.mountPath" . }}
  readOnly: true
{{- end -}}
{{- end -}}

{{- define "gridwatch.apiKey.volume" -}}
{{- if .Values.apiKey.enabled -}}
- name: api-key
  secret:
    secretName: {{ include "gridwatch.apiKey.secretName" . }}
    # Only this key, as a file the pod's group (fsGroup) may read: 0440.
    items:
      - key: {{ .Values.apiKey.secretKey | quote }}
        path: key
    defaultMode: 288
{{- end -}}
{{- end -}}

{{/* Pod template annotation that rolls the pods when the chart's own key Secret changes; empty otherwise. */}}
{{- define "gridwatch.apiKey.checksumAnnotation" -}}
{{- if include "gridwatch.apiKey.createSecret" . -}}
checksum/api-key: {{ include (print .Template.BasePath "/api-key-secret.yaml") . | sha256sum }}
{{- end -}}
{{- end -}}

{{/*
Training (values `training`): `gridwatch train --promote-if-better` in the backend's image, from a file on the data
claim into the backend's models claim. One Job spec for the hook Job and the CronJob's jobTemplate.
*/}}
{{- define "gridwatch.training.enabled" -}}
{{- if or .Values.training.job.enabled .Values.training.cronJob.enabled -}}
true
{{- end -}}
{{- end -}}

{{- define "gridwatch.training.dataMountPath" -}}
/data
{{- end -}}

{{/* The container's args after the image's entrypoint (`gridwatch`), as a JSON list. */}}
{{- define "gridwatch.training.args" -}}
{{- $training := .Values.training -}}
{{- $data := printf "%s/%s" (include "gridwatch.training.dataMountPath" .) $training.data.file -}}
{{- $args := list "train" "--model-dir" (toString .Values.backend.config.MODEL_DIR) "--data" $data "--promote-if-better" "--holdout" (toString $training.holdout) -}}
{{- if $training.dropInvalid -}}
{{- $args = append $args "--drop-invalid" -}}
{{- end -}}
{{- if not (kindIs "invalid" $training.contamination) -}}
{{- $args = concat $args (list "--contamination" (toString $training.contamination)) -}}
{{- end -}}
{{- range $training.extraArgs -}}
{{- $args = append $args (toString .) -}}
{{- end -}}
{{- toJson $args -}}
{{- end -}}

{{- define "gridwatch.training.jobSpec" -}}
{{- $training := .Values.training -}}
backoffLimit: {{ $training.backoffLimit }}
activeDeadlineSeconds: {{ $training.activeDeadlineSeconds }}
podFailurePolicy:
  rules:
    # Exit code 2 is a file the CLI refuses (named in the log): retrying cannot help.
    - action: FailJob
      onExitCodes:
        containerName: train
        operator: In
        values: [2]
    # A pod evicted or preempted is retried without counting against backoffLimit.
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
template:
  metadata:
    labels:
      {{- include "gridwatch.componentLabels" (dict "context" . "component" "training") | nindent 6 }}
      {{- with $training.podLabels }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- with $training.podAnnotations }}
    annotations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  spec:
    # Never: a failed attempt keeps its pod and its log; backoffLimit makes the retries.
    restartPolicy: Never
    serviceAccountName: {{ include "gridwatch.serviceAccountName" . }}
    automountServiceAccountToken: false
    enableServiceLinks: false
    securityContext:
      {{- include "gridwatch.podSecurityContext" . | nindent 6 }}
    {{- with .Values.backend.imagePullSecrets }}
    imagePullSecrets:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    containers:
      - name: train
        image: {{ include "gridwatch.image" (dict "image" .Values.backend.image "context" .) | quote }}
        imagePullPolicy: {{ .Values.backend.image.pullPolicy }}
        args: {{ include "gridwatch.training.args" . }}
        # The folder and artifact name the backend serves from (backend.config), so both address one model store.
        env:
          - name: MODEL_DIR
            value: {{ .Values.backend.config.MODEL_DIR | toString | quote }}
          - name: MODEL_NAME
            value: {{ .Values.backend.config.MODEL_NAME | toString | quote }}
        resources:
          {{- toYaml $training.resources | nindent 10 }}
        securityContext:
          {{- include "gridwatch.containerSecurityContext" . | nindent 10 }}
        volumeMounts:
          - name: models
            mountPath: {{ .Values.backend.config.MODEL_DIR }}
          - name: data
            mountPath: {{ include "gridwatch.training.dataMountPath" . }}
            readOnly: true
            {{- with $training.data.subPath }}
            subPath: {{ . | quote }}
            {{- end }}
          - name: tmp
            mountPath: /tmp
    volumes:
      - name: models
        persistentVolumeClaim:
          claimName: {{ include "gridwatch.backend.modelsClaimName" . }}
      - name: data
        persistentVolumeClaim:
          claimName: {{ $training.data.existingClaim }}
          readOnly: true
      - name: tmp
        emptyDir:
          sizeLimit: {{ $training.tmpSizeLimit }}
    {{- with $training.nodeSelector }}
    nodeSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $training.tolerations }}
    tolerations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $training.affinity }}
    affinity:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end -}}
