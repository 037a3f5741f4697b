{{/*
What every pod of the chart shares: the image reference and the security contexts (non-root, read-only root filesystem, no capabilities).
*/}}

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
A ConfigMap's data from a dict of environment variables: an empty string leaves a variable out (the program's own
default applies), booleans become true/false, whole numbers stay whole (10, not 10.0 or 1e+01) and fractions keep
their decimals.
*/}}
{{- define "gridwatch.envData" -}}
{{- range $name, $value := . }}
{{- if and (kindIs "string" $value) (eq $value "") }}
{{- else if kindIs "bool" $value }}
{{ $name }}: {{ ternary "true" "false" $value | quote }}
{{- else if or (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "int" $value) }}
{{- $number := float64 $value }}
{{ $name }}: {{ ternary (int64 $value | toString) (toString $number) (eq $number (floor $number)) | quote }}
{{- else }}
{{ $name }}: {{ toString $value | quote }}
{{- end }}
{{- end }}
{{- end -}}
