{{/*
The optional API key, shared by the backend and the UI: its Secret, mount and checksum.
*/}}

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
