{{/* The labels deploy/ puts on every object, plus Helm's bookkeeping. */}}
{{- define "nodetrust.labels" -}}
app.kubernetes.io/name: nodetrust
app.kubernetes.io/part-of: nodetrust
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The agent's objects: the labels and component=agent. */}}
{{- define "nodetrust.agentLabels" -}}
{{ include "nodetrust.labels" . }}
app.kubernetes.io/component: agent
{{- end -}}

{{/* The DaemonSet selector. Never change it: it is immutable. */}}
{{- define "nodetrust.selector" -}}
app.kubernetes.io/name: nodetrust
app.kubernetes.io/component: agent
{{- end -}}

{{/* The agent's ServiceAccount name (fixed, as in deploy/). */}}
{{- define "nodetrust.serviceAccount" -}}nodetrust{{- end -}}

{{/* The startup taint keys the admission policy lets the agent remove, as a CEL list. */}}
{{- define "nodetrust.startupTaintKeys" -}}
{{- $keys := list "nodetrust.io/agent-not-ready" -}}
{{- with .Values.startupTaint }}{{ $keys = append $keys . | uniq }}{{ end -}}
[{{ range $i, $k := $keys }}{{ if $i }}, {{ end }}'{{ $k }}'{{ end }}]
{{- end -}}

{{/* The agent's arguments: only what differs from its defaults, so default values render deploy/'s args. */}}
{{- define "nodetrust.args" -}}
- agent
{{- if .Values.uninstall }}
- --uninstall
{{- end }}
{{- with .Values.watchNamespaces }}
- --namespaces={{ prepend . (include "nodetrust.namespace" $) | join "," }}
{{- end }}
{{- if ne .Values.restart "auto" }}
- --restart={{ .Values.restart }}
{{- end }}
{{- if ne (int .Values.maxConcurrentRestarts) 1 }}
- --max-concurrent-restarts={{ .Values.maxConcurrentRestarts }}
{{- end }}
{{- if .Values.manageContainerdConfig }}
- --manage-containerd-config
{{- end }}
{{- with .Values.startupTaint }}
- --startup-taint={{ . }}
{{- end }}
{{- if not .Values.verify }}
- --verify=false
{{- end }}
{{- if ne (int .Values.healthPort) 9713 }}
- --health-addr=:{{ .Values.healthPort }}
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The agent's namespace: .Values.namespace, else the release's. */}}
{{- define "nodetrust.namespace" -}}
{{ .Values.namespace | default .Release.Namespace }}
{{- end -}}
