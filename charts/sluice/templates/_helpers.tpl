{{/*
Names and labels shared by every template.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object's name: fullnameOverride, else RELEASE-NAME (the release name alone when it already
contains the chart's name). Kept to 50 characters so that suffixes such as "-gateway" stay within 63.
*/}}
{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sluice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object names. */}}
{{- define "sluice.gateway.fullname" -}}
{{- printf "%s-gateway" (include "sluice.fullname" .) }}
{{- end }}

{{- define "sluice.worker.fullname" -}}
{{- printf "%s-worker" (include "sluice.fullname" .) }}
{{- end }}

{{/* The headless Service whose EndpointSlices list the workers: the gateway's local.kubernetes.service. */}}
{{- define "sluice.workers.serviceName" -}}
{{- printf "%s-workers" (include "sluice.fullname" .) }}
{{- end }}

{{- define "sluice.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "sluice.gateway.fullname" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sluice.worker.serviceAccountName" -}}
{{- if .Values.workers.serviceAccount.create }}
{{- default (include "sluice.worker.fullname" .) .Values.workers.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.workers.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the gateway reads its environment from: existingSecret, or the one the chart creates. */}}
{{- define "sluice.gateway.secretName" -}}
{{- default (include "sluice.gateway.fullname" .) .Values.gateway.existingSecret }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "sluice.labels" -}}
helm.sh/chart: {{ include "sluice.chart" . }}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
{{- end }}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "sluice.gateway.selectorLabels" -}}
{{ include "sluice.selectorLabels" (dict "ctx" . "component" "gateway") }}
{{- end }}

{{- define "sluice.worker.selectorLabels" -}}
{{ include "sluice.selectorLabels" (dict "ctx" . "component" "worker") }}
{{- end }}

{{- define "sluice.gateway.labels" -}}
{{ include "sluice.labels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "sluice.worker.labels" -}}
{{ include "sluice.labels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{/* An image reference: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "sluice.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* The worker's image: the CUDA build when GPUs are enabled. */}}
{{- define "sluice.worker.image" -}}
{{- if .Values.workers.gpu.enabled }}
{{- include "sluice.image" (dict "ctx" . "image" .Values.workers.gpu.image) }}
{{- else }}
{{- include "sluice.image" (dict "ctx" . "image" .Values.workers.image) }}
{{- end }}
{{- end }}

{{- define "sluice.worker.imagePullPolicy" -}}
{{- if .Values.workers.gpu.enabled }}
{{- .Values.workers.gpu.image.pullPolicy }}
{{- else }}
{{- .Values.workers.image.pullPolicy }}
{{- end }}
{{- end }}

{{/* The device the worker computes on. */}}
{{- define "sluice.worker.device" -}}
{{- if .Values.workers.gpu.enabled }}cuda:0{{ else }}cpu{{ end }}
{{- end }}

{{/* Where the worker finds its model file. */}}
{{- define "sluice.worker.modelPath" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.workers.model.mountPath) .Values.workers.model.file }}
{{- end }}

{{/*
Checks that must hold for any install; each stops the render with a message saying what to change.
*/}}
{{- define "sluice.validate" -}}
{{- if and .Values.airGapped (gt (len .Values.clouds) 0) }}
{{- fail (printf "airGapped is true, but %d cloud backend(s) are configured under clouds (first: %q): an air-gapped gateway refuses to start with any cloud backend. Set clouds: [] or airGapped: false." (len .Values.clouds) (index .Values.clouds 0).name) }}
{{- end }}
{{- if le (int .Values.gateway.terminationGracePeriodSeconds) (int (ceil .Values.gateway.drainGraceSeconds)) }}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) must be above gateway.drainGraceSeconds (%v): Kubernetes kills the pod when the grace period ends, cutting the drain short." (int .Values.gateway.terminationGracePeriodSeconds) .Values.gateway.drainGraceSeconds) }}
{{- end }}
{{- if le (int .Values.workers.terminationGracePeriodSeconds) (int .Values.workers.drainGraceSeconds) }}
{{- fail (printf "workers.terminationGracePeriodSeconds (%d) must be above workers.drainGraceSeconds (%d): Kubernetes kills the worker when the grace period ends, cutting in-flight streams." (int .Values.workers.terminationGracePeriodSeconds) (int .Values.workers.drainGraceSeconds)) }}
{{- end }}
{{- if and (eq .Values.workers.model.volume.type "hostPath") (not .Values.workers.model.volume.hostPath.path) }}
{{- fail "workers.model.volume.type is hostPath, but workers.model.volume.hostPath.path is empty: name the node folder that holds the model file." }}
{{- end }}
{{- range $i, $k := .Values.gateway.apiKeys }}
{{- if and $k.env $k.sha256 }}
{{- fail (printf "gateway.apiKeys[%d] (tenant %q): give env or sha256, not both" $i $k.tenant) }}
{{- end }}
{{- if not (or $k.env $k.sha256) }}
{{- fail (printf "gateway.apiKeys[%d] (tenant %q): give env (a variable the chart's Secret or existingSecret holds) or sha256" $i $k.tenant) }}
{{- end }}
{{- end }}
{{- if and (not .Values.gateway.apiKeys) (not .Values.gateway.allowUnauthenticated) }}
{{- fail "gateway.apiKeys is empty: add at least one key, or set gateway.allowUnauthenticated: true to serve without keys" }}
{{- end }}
{{- $l := .Values.gateway.limits }}
{{- $tenantLimits := or $l.default $l.tenants }}
{{- $a := .Values.gateway.autoscaling }}
{{- $pods := ternary (int $a.maxReplicas) (int .Values.gateway.replicas) $a.enabled }}
{{- if and $tenantLimits (not .Values.gateway.redis.enabled) (gt $pods 1) }}
{{- fail (printf "gateway.limits sets tenant limits, kept in memory, but up to %d gateway pods may run (%s): each pod would allow the whole limit. Set gateway.redis.enabled with gateway.redis.url to share them, or run one pod (gateway.autoscaling.enabled: false, gateway.replicas: 1)." $pods (ternary "gateway.autoscaling.maxReplicas" "gateway.replicas" $a.enabled)) }}
{{- end }}
{{- if and .Values.gateway.redis.enabled (not .Values.gateway.redis.url) (not .Values.gateway.existingSecret) }}
{{- fail "gateway.redis.enabled is true, but gateway.redis.url is empty: give the URL (stored in the chart's Secret), or an existingSecret holding SLUICE_REDIS_URL." }}
{{- end }}
{{- if and .Values.gateway.redis.enabled .Values.networkPolicy.enabled (not .Values.gateway.redis.networkPolicyPeers) }}
{{- fail "gateway.redis.enabled is true and networkPolicy.enabled, but gateway.redis.networkPolicyPeers is empty: the gateway could not reach Redis. Name its address (an ipBlock) or its pods (namespaceSelector and podSelector)." }}
{{- end }}
{{- if and .Values.tracing.enabled (not .Values.tracing.otlpEndpoint) }}
{{- fail "tracing.enabled is true, but tracing.otlpEndpoint is empty: give the collector's OTLP/gRPC address, like http://otel-collector.observability:4317." }}
{{- end }}
{{- if and .Values.tracing.enabled .Values.networkPolicy.enabled (not .Values.tracing.networkPolicyPeers) }}
{{- fail "tracing.enabled is true and networkPolicy.enabled, but tracing.networkPolicyPeers is empty: the pods could not reach the collector. Name its address (an ipBlock) or its pods (namespaceSelector and podSelector)." }}
{{- end }}
{{- if and $l.fail (not .Values.gateway.redis.enabled) }}
{{- fail "gateway.limits.fail applies when the limits are kept in Redis: set gateway.redis.enabled, or leave fail out." }}
{{- end }}
{{- end }}

{{/*
The gateway's configuration file (see config/gateway.yaml in the repository), built as a dictionary so that it is
always well-formed YAML. Chart-only keys of a cloud (cidrs, apiKey) are left out.
*/}}
{{- define "sluice.gatewayConfig" -}}
{{- $g := .Values.gateway }}
{{- $keys := list }}
{{- range $g.apiKeys }}
{{- if .env }}
{{- $keys = append $keys (dict "tenant" .tenant "key_env" .env) }}
{{- else }}
{{- $keys = append $keys (dict "tenant" .tenant "key_sha256" .sha256) }}
{{- end }}
{{- end }}
{{- $kube := dict "service" (include "sluice.workers.serviceName" .) "namespace" .Release.Namespace "port" "grpc" }}
{{- $local := dict "name" $g.local.name "clearance" $g.local.clearance "workers" $g.local.workers "kubernetes" $kube }}
{{- $_ := set $local "connect_timeout_seconds" $g.local.connect_timeout_seconds }}
{{- $_ := set $local "breaker" $g.local.breaker }}
{{- $_ := set $local "cost" $g.local.cost }}
{{- $cfg := dict "listen" (printf "0.0.0.0:%d" (int $g.ports.public)) "admin_listen" (printf "0.0.0.0:%d" (int $g.ports.admin)) }}
{{- $_ := set $cfg "air_gapped" .Values.airGapped }}
{{- if .Values.offline }}
{{- $_ := set $cfg "offline" true }}
{{- end }}
{{- if $g.adminToken.enabled }}
{{- $_ := set $cfg "admin_token_env" "SLUICE_ADMIN_TOKEN" }}
{{- end }}
{{- if $g.allowUnauthenticated }}
{{- $_ := set $cfg "allow_unauthenticated" true }}
{{- end }}
{{- if $keys }}
{{- $_ := set $cfg "api_keys" $keys }}
{{- end }}
{{- $limits := deepCopy $g.limits }}
{{- if $g.redis.enabled }}
{{- $_ := set $limits "redis" (dict "url_env" "SLUICE_REDIS_URL" "tls" $g.redis.tls "key_prefix" $g.redis.keyPrefix "timeout_ms" $g.redis.timeoutMs) }}
{{- end }}
{{- $_ := set $cfg "limits" $limits }}
{{- $_ := set $cfg "drain_grace_seconds" $g.drainGraceSeconds }}
{{- if $g.sensitivity }}
{{- $_ := set $cfg "sensitivity" $g.sensitivity }}
{{- end }}
{{- if $g.policy }}
{{- $_ := set $cfg "policy" $g.policy }}
{{- end }}
{{- if $g.ner.enabled }}
{{- $_ := set $cfg "ner" (omit $g.ner "enabled") }}
{{- end }}
{{- if $g.cost }}
{{- $_ := set $cfg "cost" $g.cost }}
{{- end }}
{{- if $g.audit.enabled }}
{{- $audit := dict "path" (printf "%s/audit.jsonl" (trimSuffix "/" $g.audit.mountPath)) "max_bytes" $g.audit.max_bytes "keep" $g.audit.keep "hash_prompts" $g.audit.hash_prompts }}
{{- $_ := set $cfg "audit" $audit }}
{{- end }}
{{- with (include "sluice.tracing" . | fromYaml) }}
{{- $_ := set $cfg "tracing" . }}
{{- end }}
{{- $_ := set $cfg "local" $local }}
{{- if and (not .Values.airGapped) .Values.clouds }}
{{- $clouds := list }}
{{- range .Values.clouds }}
{{- $clouds = append $clouds (omit . "cidrs" "apiKey") }}
{{- end }}
{{- $_ := set $cfg "clouds" $clouds }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The worker's configuration file (see config/worker.yaml in the repository). */}}
{{- define "sluice.workerConfig" -}}
{{- $w := .Values.workers }}
{{- $cfg := dict "model" (include "sluice.worker.modelPath" .) "model_id" $w.model.id }}
{{- $_ := set $cfg "listen" (printf "0.0.0.0:%d" (int $w.ports.grpc)) }}
{{- $_ := set $cfg "metrics_listen" (printf "0.0.0.0:%d" (int $w.ports.metrics)) }}
{{- $_ := set $cfg "slots" $w.slots }}
{{- $_ := set $cfg "max_waiting" $w.maxWaiting }}
{{- $_ := set $cfg "prefill_chunk" $w.prefillChunk }}
{{- if $w.maxKvTokens }}
{{- $_ := set $cfg "max_kv_tokens" $w.maxKvTokens }}
{{- end }}
{{- $_ := set $cfg "device" (include "sluice.worker.device" .) }}
{{- $_ := set $cfg "weight_format" $w.weightFormat }}
{{- $_ := set $cfg "drain_grace_seconds" $w.drainGraceSeconds }}
{{- if $w.connections }}
{{- $_ := set $cfg "connections" $w.connections }}
{{- end }}
{{- with (include "sluice.tracing" . | fromYaml) }}
{{- $_ := set $cfg "tracing" . }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The tracing section both configurations share, when tracing is on (empty otherwise). */}}
{{- define "sluice.tracing" -}}
{{- $t := .Values.tracing }}
{{- if $t.enabled }}
{{- toYaml (dict "otlp_endpoint" $t.otlpEndpoint "sample_ratio" $t.sampleRatio "queue_spans" (int $t.queueSpans) "export_timeout_ms" (int $t.exportTimeoutMs)) }}
{{- end }}
{{- end }}
