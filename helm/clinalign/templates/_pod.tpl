{{/* Pieces of the five services' pod specs (and the front doors'): (dict "root" $ "component" name). */}}

{{- define "clinalign.fullServiceName" -}}
{{- printf "clinalign.%s.v1.%sService" .component (title .component) -}}
{{- end -}}

{{/* GPUs a service's pods ask for: 0 with gpu.enabled false, or generation on a remote backend. */}}
{{- define "clinalign.serviceGpus" -}}
{{- $svc := index .root.Values .component -}}
{{- $count := 0 -}}
{{- if and .root.Values.gpu.enabled (hasKey $svc "gpu") -}}
{{- $count = int $svc.gpu.count -}}
{{- end -}}
{{- if and (eq .component "generation") (ne $svc.backend.mode "local") -}}
{{- $count = 0 -}}
{{- end -}}
{{- if and (eq .component "trainer") (eq $svc.executor "kubernetes") -}}
{{- $count = 0 -}}
{{- end -}}
{{- $count -}}
{{- end -}}

{{/*
The readiness probe's health service. generation, preference, trainer and monitor set their own
entry SERVING when their model or database is ready, which is what a Service should route on.
A reward service started without a model stays NOT_SERVING for its own name until ActivateModel,
and that call reaches it only through its Service, i.e. only once it is ready: readiness on its
own name would never let it in. Without reward.modelPath it is ready when its process is.
*/}}
{{- define "clinalign.readinessService" -}}
{{- if and (eq .component "reward") (not .root.Values.reward.modelPath) -}}
{{- else -}}
{{- include "clinalign.fullServiceName" . -}}
{{- end -}}
{{- end -}}

{{/* One probe: (dict "root" $ "port" N "service" S "timing" .probes.x). */}}
{{- define "clinalign.grpcProbe" -}}
{{- if .root.Values.tls.enabled }}
exec:
  command:
    - python
    - /etc/clinalign/probe/grpc_health.py
    - {{ .port | quote }}
    - {{ .service | quote }}
{{- else }}
grpc:
  port: {{ .port }}
  service: {{ .service | quote }}
{{- end }}
{{ include "clinalign.probeTiming" .timing }}
{{- end -}}

{{/* An HTTP probe of a front door: (dict "root" $ "path" P "timing" .probes.x), HTTPS with TLS. */}}
{{- define "clinalign.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: http
  scheme: {{ ternary "HTTPS" "HTTP" .root.Values.tls.enabled }}
{{ include "clinalign.probeTiming" .timing }}
{{- end -}}

{{- define "clinalign.probeTiming" -}}
initialDelaySeconds: {{ .initialDelaySeconds }}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
{{- end -}}

{{- define "clinalign.tlsEnv" -}}
{{- if .Values.tls.enabled }}
- name: CLINALIGN_TLS_CERT_FILE
  value: /etc/clinalign/tls/tls.crt
- name: CLINALIGN_TLS_KEY_FILE
  value: /etc/clinalign/tls/tls.key
- name: CLINALIGN_TLS_CA_FILE
  value: /etc/clinalign/tls/ca.crt
{{- if .Values.tls.mutual }}
- name: CLINALIGN_TLS_CLIENT_CA_FILE
  value: /etc/clinalign/tls/ca.crt
{{- end }}
{{- end }}
{{- end -}}

{{- define "clinalign.oidcEnv" -}}
{{- with .Values.oidc }}
{{- if .issuer }}
- name: CLINALIGN_OIDC_ISSUER
  value: {{ .issuer | quote }}
- name: CLINALIGN_OIDC_AUDIENCE
  value: {{ required "oidc.audience is required when oidc.issuer is set" .audience | quote }}
- name: CLINALIGN_OIDC_ROLES_CLAIM
  value: {{ .rolesClaim | quote }}
- name: CLINALIGN_OIDC_LEEWAY_S
  value: {{ .leewaySeconds | quote }}
{{- if .jwksUrl }}
- name: CLINALIGN_OIDC_JWKS_URL
  value: {{ .jwksUrl | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* CLINALIGN_<PEER>_TARGET of each peer a pod calls: (dict "root" $ "peers" list). */}}
{{- define "clinalign.targetsEnv" -}}
{{- $root := .root -}}
{{- range $peer := .peers }}
- name: CLINALIGN_{{ upper $peer }}_TARGET
  value: {{ include "clinalign.target" (dict "root" $root "component" $peer) | quote }}
{{- end }}
{{- end -}}

{{/*
Environment every service has, and the front doors (console, cds-hooks): (dict "root" $
"component" name "peers" list), peers being the services it calls (default: all five). The
services verify their callers against the verification file (and, with cdsHooks.enabled, the
gateway's assertions against its public key); the front doors verify no bearer token.
*/}}
{{- define "clinalign.commonEnv" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $services := splitList " " (include "clinalign.services" $root) -}}
- name: CLINALIGN_HOST
  value: 0.0.0.0
- name: CLINALIGN_DATA_DIR
  value: {{ $v.config.dataDir | quote }}
- name: CLINALIGN_LOG_LEVEL
  value: {{ $v.config.logLevel | quote }}
- name: CLINALIGN_MAX_MESSAGE_MB
  value: {{ $v.config.maxMessageMb | quote }}
- name: CLINALIGN_GRACE_PERIOD_S
  value: {{ $v.config.gracePeriodSeconds | quote }}
{{- if has .component $services }}
- name: CLINALIGN_TOKENS_FILE
  value: /etc/clinalign/auth/tokens.json
{{- if $v.cdsHooks.enabled }}
# The CDS Hooks gateway's public key, which verifies the assertions it signs for EHR users.
- name: CLINALIGN_DELEGATION_KEYS_FILE
  value: {{ include "clinalign.delegationKeysFile" $root }}
{{- end }}
{{- end }}
- name: CLINALIGN_SERVICE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "clinalign.authSecretName" $root }}
      key: {{ printf "%s%s" $v.auth.serviceTokenKeyPrefix .component }}
- name: CLINALIGN_OTEL_ENABLED
  value: {{ $v.otel.enabled | quote }}
{{- if $v.otel.enabled }}
- name: CLINALIGN_OTEL_EXPORTER
  value: {{ $v.otel.exporter | quote }}
- name: CLINALIGN_OTEL_ENDPOINT
  value: {{ $v.otel.endpoint | quote }}
{{- end }}
{{- if $v.config.huggingFaceOffline }}
- name: HF_HUB_OFFLINE
  value: "1"
{{- end }}
{{ include "clinalign.cacheEnv" $root }}
{{- include "clinalign.targetsEnv" (dict "root" $root "peers" (default $services .peers)) }}
{{- include "clinalign.tlsEnv" $root }}
{{- include "clinalign.oidcEnv" $root }}
{{- end -}}

{{/* Database URL of a store, from the external Secret or the chart's credentials Secret. */}}
{{- define "clinalign.databaseEnv" -}}
{{- $v := .root.Values -}}
{{- $mode := include "clinalign.databaseMode" .root -}}
{{- if ne $mode "sqlite" }}
- name: CLINALIGN_{{ upper .component }}_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if eq $mode "external" }}
      name: {{ $v.database.external.existingSecret }}
      key: {{ index $v.database.external (printf "%sUrlKey" .component) }}
      {{- else }}
      name: {{ include "clinalign.credentialsSecretName" .root }}
      key: {{ printf "%s-database-url" .component }}
      {{- end }}
{{- end }}
{{- end -}}

{{/* The settings only one service has. */}}
{{- define "clinalign.serviceEnv" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $c := .component -}}
{{- $svc := index $v $c -}}
- name: CLINALIGN_{{ upper $c }}_PORT
  value: {{ $svc.ports.grpc | quote }}
{{- if $v.tls.enabled }}
- name: CLINALIGN_PROBE_TLS_NAME
  value: {{ include "clinalign.componentName" . | quote }}
{{- end }}
- name: CLINALIGN_{{ upper $c }}_METRICS_PORT
  value: {{ $svc.ports.metrics | quote }}
{{- if has $c (list "preference" "trainer" "monitor") }}
{{- include "clinalign.databaseEnv" . }}
{{- end }}
{{- if eq $c "preference" }}
# The audit chain's HMAC keys (mounted from the auth Secret, this pod only); its signed
# checkpoints go to the log stream, outside the database.
- name: CLINALIGN_PREFERENCE_AUDIT_KEYS_FILE
  value: /etc/clinalign/auth/audit-keys.json
- name: CLINALIGN_PREFERENCE_AUDIT_ANCHOR_TO_LOG
  value: "true"
{{- end }}
{{- if eq $c "generation" }}
- name: CLINALIGN_GENERATION_MODEL_PATH
  value: {{ include "clinalign.generationModelPath" $root | quote }}
- name: CLINALIGN_GENERATION_MODEL_NAME
  value: {{ $svc.modelName | quote }}
- name: CLINALIGN_GENERATION_MODEL_VERSION
  value: {{ $svc.modelVersion | quote }}
- name: CLINALIGN_GENERATION_REPORT_TO_MONITOR
  value: {{ and $svc.reportToMonitor $v.monitor.enabled | quote }}
- name: CLINALIGN_GENERATION_MONITOR_SPOOL_PATH
  value: /var/spool/clinalign/generation.db
{{- $mode := $svc.backend.mode }}
- name: CLINALIGN_GENERATION_FOLLOW_REGISTRY
  value: {{ and $svc.followRegistry (eq $mode "local") | quote }}
- name: CLINALIGN_GENERATION_BACKEND
  value: {{ ternary "local" "remote" (eq $mode "local") }}
{{- if ne $mode "local" }}
- name: CLINALIGN_GENERATION_REMOTE_TIMEOUT_S
  value: {{ $svc.backend.timeoutSeconds | quote }}
{{- if eq $mode "external" }}
- name: CLINALIGN_GENERATION_REMOTE_URL
  value: {{ required "generation.backend.external.url is required with backend.mode=external" $svc.backend.external.url | quote }}
- name: CLINALIGN_GENERATION_REMOTE_API
  value: {{ $svc.backend.external.api | quote }}
- name: CLINALIGN_GENERATION_REMOTE_MODEL
  value: {{ $svc.backend.external.model | quote }}
{{- else }}
- name: CLINALIGN_GENERATION_REMOTE_URL
  value: {{ printf "http://%s:%d" (include "clinalign.componentName" (dict "root" $root "component" "inference")) (int $v.inferenceServer.port) | quote }}
- name: CLINALIGN_GENERATION_REMOTE_API
  value: {{ ternary "tgi" "openai" (eq $mode "tgi") }}
{{- if eq $mode "vllm" }}
- name: CLINALIGN_GENERATION_REMOTE_MODEL
  value: {{ $v.inferenceServer.servedModelName | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if eq $c "reward" }}
- name: CLINALIGN_REWARD_FOLLOW_REGISTRY
  value: {{ $svc.followRegistry | quote }}
{{- with $svc.modelPath }}
- name: CLINALIGN_REWARD_MODEL_PATH
  value: {{ . | quote }}
{{- end }}
{{- with $svc.modelVersion }}
- name: CLINALIGN_REWARD_MODEL_VERSION
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- if eq $c "trainer" }}
- name: CLINALIGN_TRAINER_EXECUTOR
  value: {{ $svc.executor | quote }}
{{- if include "clinalign.kubeExecutor" $root }}
{{- include "clinalign.trainerJobEnv" $root }}
{{- end }}
{{- end }}
{{- range $key, $value := $svc.settings }}
- name: CLINALIGN_{{ upper $c }}_{{ $key }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* CLINALIGN_TRAINER_KUBERNETES_*: what the executor puts in each job's batch/v1 Job. */}}
{{- define "clinalign.trainerJobEnv" -}}
{{- $root := . -}}
{{- $v := .Values -}}
{{- $jobs := $v.trainer.jobs -}}
{{- $gpus := ternary (int $jobs.gpusPerJob) 0 $v.gpu.enabled -}}
{{- $selector := $jobs.nodeSelector -}}
{{- $tolerations := $jobs.tolerations -}}
{{- if gt $gpus 0 -}}
{{- $selector = merge (deepCopy $jobs.nodeSelector) $v.gpu.nodeSelector -}}
{{- $tolerations = concat $v.gpu.tolerations $jobs.tolerations -}}
{{- end -}}
{{- $secret := include "clinalign.jobSecret" $root | fromJson }}
- name: CLINALIGN_TRAINER_KUBERNETES_NAMESPACE
  value: {{ $root.Release.Namespace | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_MAX_RUNNING_JOBS
  value: {{ $jobs.maxRunning | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_POLL_S
  value: {{ $jobs.pollSeconds | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_IMAGE
  value: {{ include "clinalign.image" (dict "root" $root "image" $jobs.image "cuda" (gt $gpus 0)) | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_IMAGE_PULL_POLICY
  value: {{ include "clinalign.pullPolicy" (dict "root" $root "image" $jobs.image) | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_SERVICE_ACCOUNT
  value: {{ include "clinalign.componentName" (dict "root" $root "component" "trainer-job") | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_GPUS_PER_JOB
  value: {{ $gpus | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_LAUNCHER
  value: {{ $jobs.launcher | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_CPU
  value: {{ $jobs.cpu | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_MEMORY
  value: {{ $jobs.memory | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_SHM_SIZE
  value: {{ $jobs.shmSize | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_NODE_SELECTOR
  value: {{ $selector | toJson | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_TOLERATIONS
  value: {{ $tolerations | toJson | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_MODEL_STORE_CLAIM
  value: {{ include "clinalign.claimName" $root | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_DATA_DIR
  value: {{ $v.config.dataDir | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_SECRET_NAME
  value: {{ $secret.name | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_SECRET_DATABASE_URL_KEY
  value: {{ $secret.urlKey | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_SECRET_SERVICE_TOKEN_KEY
  value: {{ $secret.tokenKey | quote }}
{{- if $v.tls.enabled }}
- name: CLINALIGN_TRAINER_KUBERNETES_TLS_SECRET_NAME
  value: {{ include "clinalign.tlsSecretName" $root | quote }}
{{- end }}
- name: CLINALIGN_TRAINER_KUBERNETES_RUN_AS_USER
  value: {{ $v.podSecurityContext.runAsUser | default 10001 | quote }}
- name: CLINALIGN_TRAINER_KUBERNETES_TTL_AFTER_FINISHED_S
  value: {{ $jobs.ttlSecondsAfterFinished | quote }}
{{- if gt (int $jobs.activeDeadlineSeconds) 0 }}
- name: CLINALIGN_TRAINER_KUBERNETES_ACTIVE_DEADLINE_S
  value: {{ $jobs.activeDeadlineSeconds | quote }}
{{- end }}
{{- end -}}

{{/* Scheduling: the service's own plus, with GPUs, the GPU pool's. */}}
{{- define "clinalign.scheduling" -}}
{{- $v := .root.Values -}}
{{- $spec := .spec -}}
{{- $selector := $spec.nodeSelector -}}
{{- $tolerations := $spec.tolerations -}}
{{- if .gpu -}}
{{- $selector = merge (deepCopy $spec.nodeSelector) $v.gpu.nodeSelector -}}
{{- $tolerations = concat $v.gpu.tolerations $spec.tolerations -}}
{{- end -}}
{{- with $selector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $spec.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $spec.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $spec.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $spec.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* Container resources with the GPU request and limit: (dict "resources" r "gpus" n "root" $). */}}
{{- define "clinalign.resources" -}}
{{- $res := deepCopy .resources -}}
{{- if gt (int .gpus) 0 -}}
{{- $name := .root.Values.gpu.resourceName -}}
{{- $_ := set $res "requests" (merge (dict $name (int .gpus)) (default dict $res.requests)) -}}
{{- $_ := set $res "limits" (merge (dict $name (int .gpus)) (default dict $res.limits)) -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}
