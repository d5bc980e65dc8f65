{{/* Names, labels and small helpers shared by the templates. */}}

{{- define "aad-pod-identity.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aad-pod-identity.fullname" -}}
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

{{- define "aad-pod-identity.mic.fullname" -}}
{{- printf "%s-mic" (include "aad-pod-identity.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aad-pod-identity.nmi.fullname" -}}
{{- printf "%s-nmi" (include "aad-pod-identity.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aad-pod-identity.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "aad-pod-identity.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "mic"). */}}
{{- define "aad-pod-identity.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aad-pod-identity.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "aad-pod-identity.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* "true" or "false" from a boolean or the original chart's string form. */}}
{{- define "aad-pod-identity.bool" -}}
{{- if eq (toString .) "true" -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{- define "aad-pod-identity.forceNamespaced" -}}
{{- include "aad-pod-identity.bool" .Values.forceNamespaced -}}
{{- end -}}

{{/*
Container args: the fixed ones, then `--name=value` for each (list "name" value) pair whose value is
set (not null, not ""), so an unset value leaves the binary's default. Call with
(dict "fixed" (list ...) "optional" (list (list "name" value) ...)); returns YAML.
*/}}
{{- define "aad-pod-identity.args" -}}
{{- $args := .fixed -}}
{{- range $f := .optional -}}
{{- $value := index $f 1 -}}
{{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") -}}
{{- $args = append $args (printf "--%s=%v" (index $f 0) $value) -}}
{{- end -}}
{{- end -}}
{{- toYaml $args -}}
{{- end -}}

{{/* Whether NMI may read Secrets: asked for, or needed by a service-principal identity in values. */}}
{{- define "aad-pod-identity.nmiReadsSecrets" -}}
{{- $need := .Values.rbac.allowAccessToSecrets -}}
{{- range $name, $id := .Values.azureIdentities -}}
{{- if and $id (ne (toString (default 0 $id.type)) "0") -}}{{- $need = true -}}{{- end -}}
{{- end -}}
{{- if $need -}}true{{- end -}}
{{- end -}}

{{/*
The Prometheus metric names the alerts and the dashboard query, read from files/metrics.yaml (the
one place to change them). Returns the map as YAML; use with fromYaml.
*/}}
{{- define "aad-pod-identity.metricNames" -}}
{{- (.Files.Get "files/metrics.yaml" | fromYaml).names | toYaml -}}
{{- end -}}

{{- define "aad-pod-identity.checks" -}}
{{- if not (has .Values.operationMode (list "standard" "managed")) -}}
{{- fail (printf "operationMode must be standard or managed, not %q" (toString .Values.operationMode)) -}}
{{- end -}}
{{- if and (eq .Values.operationMode "managed") (ne (include "aad-pod-identity.forceNamespaced" .) "true") -}}
{{- fail "operationMode managed requires forceNamespaced: true (NMI reads bindings per namespace)" -}}
{{- end -}}
{{- if and .Values.monitoring.podMonitor.enabled .Values.monitoring.serviceMonitor.enabled -}}
{{- fail "enable monitoring.podMonitor or monitoring.serviceMonitor, not both (each target would be scraped twice)" -}}
{{- end -}}
{{- end -}}

{{/* Keys of the Go original's chart that this chart accepts and ignores, comma-separated. */}}
{{- define "aad-pod-identity.retiredKeys" -}}
{{- $set := list -}}
{{- range $comp := list "mic" "nmi" -}}
{{- $keys := list "image" "tag" "logVerbosity" "enableScaleFeatures" -}}
{{- if eq $comp "mic" -}}{{- $keys = concat $keys (list "allowNetworkPluginKubenet" "kubeletConfig") -}}{{- end -}}
{{- range $key := $keys -}}
{{- $v := index (index $.Values $comp) $key -}}
{{- if and (not (kindIs "invalid" $v)) (ne (toString $v) "") -}}
{{- $set = append $set (printf "%s.%s" $comp $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if eq (include "aad-pod-identity.bool" $.Values.rbac.pspEnabled) "true" -}}
{{- $set = append $set "rbac.pspEnabled (PodSecurityPolicy was removed in Kubernetes 1.25; none is created)" -}}
{{- end -}}
{{- range $key := list "installCRDs" -}}
{{- $v := index $.Values $key -}}
{{- if and (not (kindIs "invalid" $v)) (ne (toString $v) "") -}}
{{- $set = append $set $key -}}
{{- end -}}
{{- end -}}
{{- join ", " $set -}}
{{- end -}}

{{/* True when mic.customCloud is enabled ("true"/"false"). */}}
{{- define "aad-pod-identity.customCloud" -}}
{{- if and .Values.mic.customCloud (eq (include "aad-pod-identity.bool" .Values.mic.customCloud.enabled) "true") -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/* Label selector of this release's NMI pods (MIC's --nmi-selector). */}}
{{- define "aad-pod-identity.nmiSelector" -}}
{{- $l := include "aad-pod-identity.selectorLabels" (dict "ctx" . "component" "nmi") | fromYaml -}}
{{- $parts := list -}}
{{- range $k := keys $l | sortAlpha -}}
{{- $parts = append $parts (printf "%s=%s" $k (index $l $k)) -}}
{{- end -}}
{{- join "," $parts -}}
{{- end -}}
