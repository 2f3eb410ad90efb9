{{/*
The chart name, or nameOverride.
*/}}
{{- define "lastcall.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's resources: fullnameOverride, or the release
name plus the chart name unless the release name already contains it.
*/}}
{{- define "lastcall.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "lastcall.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "lastcall.labels" -}}
helm.sh/chart: {{ include "lastcall.chart" . }}
{{ include "lastcall.selectorLabels" . }}
app.kubernetes.io/version: {{ include "lastcall.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lastcall
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of the agent's pod template: no chart version, so a chart-only
upgrade restarts no agent.
*/}}
{{- define "lastcall.podLabels" -}}
{{ include "lastcall.selectorLabels" . }}
app.kubernetes.io/part-of: lastcall
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The image reference: repository:tag, with @digest when image.digest is set.
*/}}
{{- define "lastcall.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository (include "lastcall.imageTag" .) .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "lastcall.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
The node selector of the agent and the injector: nodeSelector, on Linux
nodes only (the binaries are Linux ones; tolerate-all would otherwise place
the agent on Windows spot pools).
*/}}
{{- define "lastcall.nodeSelector" -}}
{{- toYaml (merge (deepCopy .) (dict "kubernetes.io/os" "linux")) }}
{{- end }}

{{/*
Labels that select the agent's pods; never change them on upgrade, a
DaemonSet's selector is immutable.
*/}}
{{- define "lastcall.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lastcall.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node-agent
{{- end }}

{{/*
The agent's service account.
*/}}
{{- define "lastcall.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lastcall.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image tag: image.tag, or the chart's appVersion.
*/}}
{{- define "lastcall.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
The user name the apiserver gives the agent's service-account tokens.
*/}}
{{- define "lastcall.serviceAccountUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "lastcall.serviceAccountName" .) }}
{{- end }}

{{/*
What the two node-restriction policies share: they apply to the agent's
service account only; nodeName is the node its pod-bound token names, or ""
when the token names none, which restrictionTokenRule refuses. A policy
adds its own variables after these, and its own validations after
restrictionTokenRule.
*/}}
{{- define "lastcall.restrictionMatch" -}}
matchConditions:
  - name: lastcall-agent
    expression: >-
      request.userInfo.username == {{ include "lastcall.serviceAccountUser" . | squote }}
variables:
  - name: nodeName
    expression: >-
      has(request.userInfo.extra) &&
      'authentication.kubernetes.io/node-name' in request.userInfo.extra &&
      size(request.userInfo.extra['authentication.kubernetes.io/node-name']) == 1
      ? request.userInfo.extra['authentication.kubernetes.io/node-name'][0] : ''
{{- end }}
{{- define "lastcall.restrictionTokenRule" -}}
- expression: variables.nodeName != ''
  reason: Forbidden
  message: >-
    lastcall: the agent's token names no node; the agent may change Nodes
    and delete pods only with the pod-bound token the kubelet mounts
{{- end }}

{{/*
The sidecar injector's resource name.
*/}}
{{- define "lastcall.injectorName" -}}
{{- printf "%s-injector" (include "lastcall.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the injector's pods.
*/}}
{{- define "lastcall.injectorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "lastcall.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: injector
{{- end }}

{{/*
Labels on every injector resource.
*/}}
{{- define "lastcall.injectorLabels" -}}
helm.sh/chart: {{ include "lastcall.chart" . }}
{{ include "lastcall.injectorSelectorLabels" . }}
app.kubernetes.io/version: {{ include "lastcall.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lastcall
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of the injector's pod template, without the chart version.
*/}}
{{- define "lastcall.injectorPodLabels" -}}
{{ include "lastcall.injectorSelectorLabels" . }}
app.kubernetes.io/part-of: lastcall
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The Secret with the injector's serving certificate (and, unless
cert-manager issues it, its CA).
*/}}
{{- define "lastcall.injectorSecret" -}}
{{- printf "%s-tls" (include "lastcall.injectorName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
