{{/* Names, labels and the pieces every workload shares. */}}

{{- define "clinalign.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clinalign.fullname" -}}
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

{{/* The five services, in the design's order. */}}
{{- define "clinalign.services" -}}
generation reward preference trainer monitor
{{- end -}}

{{/* Services that can run on a GPU (their images have -cuda variants). */}}
{{- define "clinalign.gpuServices" -}}
generation reward trainer
{{- end -}}

{{/* A component's resource name: (dict "root" $ "component" "generation"). */}}
{{- define "clinalign.componentName" -}}
{{- printf "%s-%s" (include "clinalign.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clinalign.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "clinalign.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: clinalign
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "clinalign.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clinalign.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of a component: (dict "root" $ "component" "generation"). */}}
{{- define "clinalign.componentLabels" -}}
{{ include "clinalign.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "clinalign.componentSelectorLabels" -}}
{{ include "clinalign.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
Labels the trainer's Kubernetes executor puts on its job pods (clinalign.trainer.jobs.kube.labels):
they carry no release label, so the policies select them by name and component.
*/}}
{{- define "clinalign.jobPodSelector" -}}
app.kubernetes.io/name: clinalign
app.kubernetes.io/component: trainer-job
app.kubernetes.io/managed-by: clinalign-trainer
{{- end -}}

{{/*
An image reference: (dict "root" $ "image" .image "cuda" true).
An empty tag becomes the appVersion, with gpu.cudaTagSuffix on a GPU image.
*/}}
{{- define "clinalign.image" -}}
{{- $root := .root -}}
{{- $registry := default $root.Values.image.registry .image.registry -}}
{{- $tag := .image.tag -}}
{{- if not $tag -}}
{{- $tag = $root.Chart.AppVersion -}}
{{- if .cuda -}}{{- $tag = printf "%s%s" $tag $root.Values.gpu.cudaTagSuffix -}}{{- end -}}
{{- end -}}
{{- $ref := printf "%s:%s" .image.repository $tag -}}
{{- if $registry -}}{{- $ref = printf "%s/%s" $registry $ref -}}{{- end -}}
{{- if .image.digest -}}{{- $ref = printf "%s@%s" $ref .image.digest -}}{{- end -}}
{{- $ref -}}
{{- end -}}

{{- define "clinalign.pullPolicy" -}}
{{- default .root.Values.image.pullPolicy .image.pullPolicy -}}
{{- end -}}

{{- define "clinalign.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Whether a service's pods get GPUs: (dict "root" $ "count" N). */}}
{{- define "clinalign.gpuOn" -}}
{{- if and .root.Values.gpu.enabled (gt (int .count) 0) -}}true{{- end -}}
{{- end -}}

{{/* host:port of a service, as its peers and the job pods dial it. */}}
{{/* Where the services call a peer: its headless Service through gRPC's DNS resolver, so
calls are balanced over every ready pod (the channels use round_robin). */}}
{{- define "clinalign.target" -}}
{{- $svc := index .root.Values .component -}}
{{- printf "dns:///%s-headless:%d" (include "clinalign.componentName" .) (int $svc.ports.grpc) -}}
{{- end -}}

{{- define "clinalign.authSecretName" -}}
{{- default (printf "%s-credentials" (include "clinalign.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "clinalign.credentialsSecretName" -}}
{{- printf "%s-credentials" (include "clinalign.fullname" .) -}}
{{- end -}}

{{/* The services' certificate: an existing Secret, cert-manager's, or the chart's own. */}}
{{- define "clinalign.tlsSecretName" -}}
{{- if and .Values.tls.existingSecret (not .Values.tls.certManager.enabled) -}}
{{- .Values.tls.existingSecret -}}
{{- else -}}
{{- printf "%s-tls" (include "clinalign.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Every name a service is called by: its Service, in each DNS form, and the headless one;
the console's Service (and the CDS Hooks gateway's) in each DNS form. */}}
{{- define "clinalign.tlsDnsNames" -}}
{{- $root := . -}}
{{- $names := list -}}
{{- range $c := splitList " " (include "clinalign.services" $root) }}
{{- $name := include "clinalign.componentName" (dict "root" $root "component" $c) -}}
{{- $ns := $root.Release.Namespace -}}
{{- $names = concat $names (list $name (printf "%s.%s" $name $ns) (printf "%s.%s.svc" $name $ns) (printf "%s.%s.svc.%s" $name $ns $root.Values.clusterDomain) (printf "%s-headless" $name)) -}}
{{- end }}
{{- /* The console (and the CDS Hooks gateway, when enabled) serve HTTPS with the same
certificate, behind the Ingress. */ -}}
{{- $doors := list "console" -}}
{{- if $root.Values.cdsHooks.enabled }}{{ $doors = append $doors "cds-hooks" }}{{ end -}}
{{- range $door := $doors }}
{{- $name := include "clinalign.componentName" (dict "root" $root "component" $door) -}}
{{- $ns := $root.Release.Namespace -}}
{{- $names = concat $names (list $name (printf "%s.%s" $name $ns) (printf "%s.%s.svc" $name $ns) (printf "%s.%s.svc.%s" $name $ns $root.Values.clusterDomain)) -}}
{{- end }}
{{- $names = concat $names $root.Values.tls.certManager.extraDnsNames -}}
{{- toJson $names -}}
{{- end -}}

{{- define "clinalign.claimName" -}}
{{- default (printf "%s-data" (include "clinalign.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* "external", "postgresql" or "sqlite". */}}
{{- define "clinalign.databaseMode" -}}
{{- if .Values.database.external.existingSecret -}}external
{{- else if .Values.postgresql.enabled -}}postgresql
{{- else -}}sqlite
{{- end -}}
{{- end -}}

{{/* Whether a service mounts the data volume: (dict "root" $ "component" name). */}}
{{- define "clinalign.mountsData" -}}
{{- if or (has .component (list "generation" "reward" "trainer")) (eq (include "clinalign.databaseMode" .root) "sqlite") -}}true{{- end -}}
{{- end -}}

{{/* Whether the trainer runs the Kubernetes executor. */}}
{{- define "clinalign.kubeExecutor" -}}
{{- if and .Values.trainer.enabled (eq .Values.trainer.executor "kubernetes") -}}true{{- end -}}
{{- end -}}

{{/* The Secret (name, url key, token key) the trainer's job pods read. */}}
{{- define "clinalign.jobSecret" -}}
{{- $jobs := .Values.trainer.jobs -}}
{{- if $jobs.existingSecret -}}
{{- dict "name" $jobs.existingSecret "urlKey" $jobs.databaseUrlKey "tokenKey" $jobs.serviceTokenKey | toJson -}}
{{- else if and (not .Values.auth.existingSecret) (ne (include "clinalign.databaseMode" .) "external") -}}
{{- dict "name" (include "clinalign.credentialsSecretName" .) "urlKey" "trainer-database-url" "tokenKey" (printf "%strainer-job" .Values.auth.serviceTokenKeyPrefix) | toJson -}}
{{- else -}}
{{- fail "trainer.jobs.existingSecret is required with trainer.executor=kubernetes when auth.existingSecret or database.external.existingSecret is set: the job pods read the trainer database URL and the service token from one Secret" -}}
{{- end -}}
{{- end -}}

{{/* Where the generation service's model lives. */}}
{{- define "clinalign.generationModelPath" -}}
{{- default (printf "%s/models/foundation" .Values.config.dataDir) .Values.generation.modelPath -}}
{{- end -}}

{{/* The volumes every ClinAlign pod has: /tmp and caches on emptyDirs (read-only root). */}}
{{- define "clinalign.cacheEnv" -}}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /var/cache/clinalign
- name: HF_HOME
  value: /var/cache/clinalign/huggingface
- name: TRITON_CACHE_DIR
  value: /var/cache/clinalign/triton
- name: PYTHONUNBUFFERED
  value: "1"
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
{{- end -}}

{{/* Pod labels of a NetworkPolicy group: (dict "root" $ "group" name). */}}
{{- define "clinalign.peerLabels" -}}
{{- if eq .group "trainer-job" -}}
{{ include "clinalign.jobPodSelector" .root }}
{{- else -}}
{{ include "clinalign.componentSelectorLabels" (dict "root" .root "component" .group) }}
{{- end -}}
{{- end -}}

{{/* An egress rule's `to` from a list of CIDRs; none: any address (the ports still apply). */}}
{{- define "clinalign.cidrPeers" -}}
{{- if . }}
to:
  {{- range . }}
  - ipBlock:
      cidr: {{ . }}
  {{- end }}
{{- else }}
# No CIDRs configured: any address, on these ports only.
{{- end }}
{{- end -}}

{{/* The console's session-key Secret: an existing one, or the one the chart generates. */}}
{{- define "clinalign.consoleSessionSecretName" -}}
{{- default (include "clinalign.componentName" (dict "root" . "component" "console-session")) .Values.console.session.existingSecret -}}
{{- end -}}

{{/* A front door's public URL from its values (console, cdsHooks): its publicUrl, else
https://<the first Ingress host>; empty when neither is set. */}}
{{- define "clinalign.frontDoorPublicUrl" -}}
{{- if .publicUrl -}}
{{- .publicUrl -}}
{{- else if and .ingress.enabled .ingress.hosts -}}
{{- printf "https://%s" (first .ingress.hosts) -}}
{{- end -}}
{{- end -}}

{{/* The URL clinicians open the console at. */}}
{{- define "clinalign.consolePublicUrl" -}}
{{- include "clinalign.frontDoorPublicUrl" .Values.console -}}
{{- end -}}

{{/* The base URL EHRs call the CDS Hooks gateway at. */}}
{{- define "clinalign.cdsHooksPublicUrl" -}}
{{- include "clinalign.frontDoorPublicUrl" .Values.cdsHooks -}}
{{- end -}}

{{/* A component's key in values.yaml: cds-hooks is cdsHooks, the others their own name. */}}
{{- define "clinalign.valuesKey" -}}
{{- ternary "cdsHooks" . (eq . "cds-hooks") -}}
{{- end -}}

{{/* The CDS Hooks gateway's signing-key Secret (signing.jwk, delegation-keys.json); rendering
fails without one, since Helm cannot derive the public JWK from a key it generates. */}}
{{- define "clinalign.cdsHooksSigningSecretName" -}}
{{- $name := .Values.cdsHooks.signingKey.existingSecret -}}
{{- if not $name -}}
{{- fail (printf "cdsHooks.enabled needs cdsHooks.signingKey.existingSecret: a Secret with keys signing.jwk (the gateway's private ES256 JWK) and delegation-keys.json ({\"cds-hooks\": <its public JWK>}, which every service mounts). Make the pair where the clinalign package is installed and store it, then set the value (docs/platform.md, \"The CDS Hooks gateway\"):  python -c 'import json,pathlib; from clinalign.common.assertions import load_signing_key, public_jwk; k = load_signing_key(pathlib.Path(\"signing.jwk\")); pathlib.Path(\"delegation-keys.json\").write_text(json.dumps({\"cds-hooks\": public_jwk(k)}))' && kubectl -n %s create secret generic %s --from-file=signing.jwk --from-file=delegation-keys.json && rm signing.jwk" .Release.Namespace (include "clinalign.componentName" (dict "root" . "component" "cds-hooks-signing"))) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* Where every service reads the front doors' public keys (with cdsHooks.enabled). */}}
{{- define "clinalign.delegationKeysFile" -}}
/etc/clinalign/delegation/delegation-keys.json
{{- end -}}
