{{/*
The training Job and CronJob: whether they run, their arguments and their shared Job spec.
*/}}

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
          # After training, versions beyond these are pruned (never the active, previous or shadow one).
          - name: MODEL_KEEP_VERSIONS
            value: {{ int64 .Values.backend.config.MODEL_KEEP_VERSIONS | toString | quote }}
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
