{{/*
Names. Kubernetes limits names and label values to 63 characters, so every name is cut there
and never ends in a dash.
*/}}
{{- define "kvol.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kvol.fullname" -}}
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

{{/* <fullname>-<suffix>, still within 63 characters: the prefix is cut, the suffix kept. */}}
{{- define "kvol.componentName" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $prefix := include "kvol.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" -}}
{{- printf "%s-%s" $prefix $suffix -}}
{{- end -}}

{{- define "kvol.controller.fullname" -}}
{{- include "kvol.componentName" (list . "controller") -}}
{{- end -}}

{{- define "kvol.node.fullname" -}}
{{- include "kvol.componentName" (list . "node") -}}
{{- end -}}

{{- define "kvol.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The CSI driver name: the plugin reports it and pods name it in their volumes. */}}
{{- define "kvol.driverName" -}}
csi.kvol.dev
{{- end -}}

{{/*
Labels. Selector labels are the ones that never change across upgrades (a Deployment's or
DaemonSet's selector is immutable); the version and chart labels go only into the full set.
*/}}
{{- define "kvol.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvol.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "kvol.labels" -}}
helm.sh/chart: {{ include "kvol.chart" . }}
{{ include "kvol.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: kvol
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels and selector labels of one component: (list $ "controller"). */}}
{{- define "kvol.componentLabels" -}}
{{- $root := index . 0 -}}
{{ include "kvol.labels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "kvol.componentSelectorLabels" -}}
{{- $root := index . 0 -}}
{{ include "kvol.selectorLabels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Service account names. */}}
{{- define "kvol.controller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kvol.controller.fullname" .) .Values.serviceAccount.controller.name -}}
{{- else -}}
{{- required "serviceAccount.controller.name is required when serviceAccount.create is false" .Values.serviceAccount.controller.name -}}
{{- end -}}
{{- end -}}

{{- define "kvol.node.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kvol.node.fullname" .) .Values.serviceAccount.node.name -}}
{{- else -}}
{{- required "serviceAccount.node.name is required when serviceAccount.create is false" .Values.serviceAccount.node.name -}}
{{- end -}}
{{- end -}}

{{/* repository[:tag][@digest] of one entry under .Values.image: (list $ "kvol"). */}}
{{- define "kvol.image" -}}
{{- $root := index . 0 -}}
{{- $image := index $root.Values.image (index . 1) -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/*
The store URL of the chart's backend, handed to the node plugin. A filesystem store is a host
directory mounted at the same path in the pod; an s3 store takes its keys from the environment.
*/}}
{{- define "kvol.storeURL" -}}
{{- $b := .Values.backend -}}
{{- if eq $b.type "filesystem" -}}
{{- printf "file://%s" (required "backend.filesystem.hostPath is required" $b.filesystem.hostPath) -}}
{{- else if eq $b.type "s3" -}}
{{- $bucket := required "backend.s3.bucket is required when backend.type is s3" $b.s3.bucket -}}
{{- if $b.s3.prefix -}}
{{- printf "s3://%s/%s" $bucket (trimAll "/" $b.s3.prefix) -}}
{{- else -}}
{{- printf "s3://%s" $bucket -}}
{{- end -}}
{{- else -}}
{{- fail (printf "backend.type must be filesystem or s3, not %q" $b.type) -}}
{{- end -}}
{{- end -}}

{{/* The store URL the node plugin is given: node.storeURL, else the chart's backend. */}}
{{- define "kvol.node.storeURL" -}}
{{- if .Values.node.storeURL -}}
{{- .Values.node.storeURL -}}
{{- else if .Values.backend.create -}}
{{- include "kvol.storeURL" . -}}
{{- else -}}
{{- fail "node.storeURL is required when backend.create is false: the plugin needs a store" -}}
{{- end -}}
{{- end -}}

{{/*
Environment that gives a container the chart's s3 backend: obstore reads the AWS_* variables.
The Secret's keys are the ones the operator reads (accessKeyId, secretAccessKey, sessionToken).
*/}}
{{- define "kvol.s3Env" -}}
{{- $b := .Values.backend -}}
{{- if and $b.create (eq $b.type "s3") }}
{{- with $b.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- if hasPrefix "http://" . }}
- name: AWS_ALLOW_HTTP
  value: "true"
{{- end }}
{{- end }}
{{- with $b.s3.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- if $b.s3.pathStyle }}
- name: AWS_VIRTUAL_HOSTED_STYLE_REQUEST
  value: "false"
{{- end }}
{{- with $b.s3.credentialsSecret.name }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: accessKeyId
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: secretAccessKey
- name: AWS_SESSION_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: sessionToken
      optional: true
{{- end }}
{{- end }}
{{- end -}}
