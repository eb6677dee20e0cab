{{/* Remora's object names are fixed: the proxies, the injector and the docs name them. */}}

{{- define "remora.namespaceGuard" -}}
{{- if ne .Release.Namespace "remora-system" -}}
{{- fail (printf "remora: install into the namespace remora-system, not %q (helm install -n remora-system --create-namespace): remora-control's serving certificate names remora-control.remora-system.svc" .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/*
Revisions (remora.dev/rev): the default revision (revision "") keeps the plain names; revision X
suffixes every name with -X, so two revisions install side by side (docs/upgrade.md).
*/}}
{{- define "remora.revSuffix" -}}
{{- if .Values.revision }}-{{ .Values.revision }}{{ end -}}
{{- end -}}

{{- define "remora.revision" -}}
{{ .Values.revision | default "default" }}
{{- end -}}

{{- define "remora.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "remora.version" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "remora.labels" -}}
app.kubernetes.io/name: remora
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "remora.version" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: remora
remora.dev/rev: {{ include "remora.revision" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "control-plane"). */}}
{{- define "remora.selector" -}}
app.kubernetes.io/name: remora
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- if .root.Values.revision }}
remora.dev/rev: {{ .root.Values.revision }}
{{- end }}
{{- end -}}

{{- define "remora.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1337
runAsGroup: 1337
fsGroup: 1337
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "remora.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1337
runAsGroup: 1337
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Scheduling of one component; call with (dict "root" $ "component" "injector" "values" .Values.injector). */}}
{{- define "remora.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
affinity:
{{- if .values.affinity }}
  {{- toYaml .values.affinity | nindent 2 }}
{{- else }}
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "remora.selector" . | nindent 12 }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A PodDisruptionBudget; call with (dict "root" $ "component" "injector" "name" "remora-injector" "values" .Values.injector). */}}
{{- define "remora.pdb" -}}
{{- if .values.podDisruptionBudget.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "remora.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  maxUnavailable: {{ .values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "remora.selector" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/*
A Secret generated once and then kept: on upgrade `lookup` returns the live Secret and its data
is rendered again unchanged. (Offline renders such as `helm template` see nothing and generate.)
*/}}
{{- define "remora.existingSecretData" -}}
{{- $s := lookup "v1" "Secret" .namespace .name -}}
{{- if $s }}{{ toYaml $s.data }}{{ end -}}
{{- end -}}
