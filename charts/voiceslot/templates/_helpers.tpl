{{/*
Names.
*/}}
{{- define "voiceslot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or <release> when it already contains the chart name.
Truncated to 52 characters so that "-synthesizer" (12) still fits a 63-character name.
*/}}
{{- define "voiceslot.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 51 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 51 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 51 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "voiceslot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels. Call with (dict "ctx" $ "component" "allocator").
*/}}
{{- define "voiceslot.labels" -}}
helm.sh/chart: {{ include "voiceslot.chart" .ctx }}
{{ include "voiceslot.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: voiceslot
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "voiceslot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "voiceslot.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "voiceslot.allocatorName" -}}
{{- printf "%s-allocator" (include "voiceslot.fullname" .) }}
{{- end }}

{{- define "voiceslot.synthesizerName" -}}
{{- printf "%s-synthesizer" (include "voiceslot.fullname" .) }}
{{- end }}

{{- define "voiceslot.operatorName" -}}
{{- printf "%s-operator" (include "voiceslot.fullname" .) }}
{{- end }}

{{- define "voiceslot.migrationsName" -}}
{{- printf "%s-migrations" (include "voiceslot.fullname" .) }}
{{- end }}

{{/*
"true" when migrations run in the pre-install/pre-upgrade Job (PostgreSQL only: a SQLite
file lives on the pods' own volume, where a Job could not reach it), else "".
*/}}
{{- define "voiceslot.migrationJob" -}}
{{- if and .Values.migrations.job.enabled (eq .Values.database.kind "postgresql") }}true{{ end }}
{{- end }}

{{- define "voiceslot.configMapName" -}}
{{- printf "%s-config" (include "voiceslot.fullname" .) }}
{{- end }}

{{- define "voiceslot.secretName" -}}
{{- default (include "voiceslot.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "voiceslot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "voiceslot.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "voiceslot.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "voiceslot.operatorName" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "voiceslot.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "voiceslot.allocatorTarget" -}}
{{- default (printf "%s:%d" (include "voiceslot.allocatorName" .) (int .Values.grpcPort)) .Values.synthesizer.allocatorTarget }}
{{- end }}

{{/*
Namespaces the operator watches (a list), when not cluster-wide.
*/}}
{{- define "voiceslot.operatorNamespaces" -}}
{{- if .Values.operator.watch.namespaces }}
{{- toJson .Values.operator.watch.namespaces }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/*
The settings file: values.config plus what the chart decides.
*/}}
{{- define "voiceslot.configFile" -}}
{{- $config := deepCopy .Values.config }}
{{- if and .Values.operator.enabled .Values.operator.drivesMaintenance }}
{{- $allocator := default dict (get $config "allocator") }}
{{- $_ := set $allocator "maintenance_interval_s" nil }}
{{- $_ := set $config "allocator" $allocator }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
A checksum of everything the Secret is rendered from, so pods roll when it changes.
*/}}
{{- define "voiceslot.secretChecksum" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret | sha256sum }}
{{- else }}
{{- list .Values.providers .Values.auth .Values.database .Values.s3 .Values.synthesizer.allocatorApiKey .Values.operator.apiKey | toJson | sha256sum }}
{{- end }}
{{- end }}

{{/*
Checks the schema cannot express.
*/}}
{{- define "voiceslot.validate" -}}
{{- if not .Values.secrets.existingSecret }}
{{- $names := list }}
{{- range .Values.providers }}
{{- if has .name $names }}
{{- fail (printf "providers: the name %q is used twice; provider names must be unique" .name) }}
{{- end }}
{{- $names = append $names .name }}
{{- end }}
{{- if not (has .Values.defaultProvider $names) }}
{{- fail (printf "defaultProvider %q is not one of providers[].name %v" .Values.defaultProvider $names) }}
{{- end }}
{{- end }}
{{- $as := .Values.synthesizer.autoscaling }}
{{- if $as.enabled }}
{{- if gt (int $as.minReplicas) (int $as.maxReplicas) }}
{{- fail (printf "synthesizer.autoscaling: minReplicas (%d) is above maxReplicas (%d)" (int $as.minReplicas) (int $as.maxReplicas)) }}
{{- end }}
{{- if and (not $as.targetCPUUtilizationPercentage) (not $as.targetMemoryUtilizationPercentage) }}
{{- fail "synthesizer.autoscaling: set targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- $requests := default dict .Values.synthesizer.resources.requests }}
{{- if and $as.targetCPUUtilizationPercentage (not (hasKey $requests "cpu")) }}
{{- fail "synthesizer.autoscaling: a CPU utilisation target needs synthesizer.resources.requests.cpu" }}
{{- end }}
{{- if and $as.targetMemoryUtilizationPercentage (not (hasKey $requests "memory")) }}
{{- fail "synthesizer.autoscaling: a memory utilisation target needs synthesizer.resources.requests.memory" }}
{{- end }}
{{- end }}
{{- $multi := or (gt (int .Values.allocator.replicaCount) 1) (gt (int .Values.synthesizer.replicaCount) 1) .Values.synthesizer.autoscaling.enabled }}
{{- $shared := and .Values.persistence.enabled (has "ReadWriteMany" .Values.persistence.accessModes) }}
{{- if and (eq (dig "storage" "kind" "local" .Values.config) "local") $multi (not $shared) }}
{{- fail "config.storage.kind local with several replicas needs a shared volume: persistence.enabled with accessModes [ReadWriteMany], or config.storage.kind s3" }}
{{- end }}
{{- /* The schema checks a claim the chart creates; an existing one is looked up (install
and upgrade only: `helm template` has no cluster and renders without this check). */}}
{{- with .Values.persistence.existingClaim }}
{{- if $.Values.persistence.enabled }}
{{- $claim := lookup "v1" "PersistentVolumeClaim" $.Release.Namespace . }}
{{- if and $claim (not (has "ReadWriteMany" (dig "spec" "accessModes" list $claim))) }}
{{- fail (printf "persistence.existingClaim %q is %v, not ReadWriteMany: the allocator and the synthesizer both mount it, from pods that may run on different nodes" . (dig "spec" "accessModes" list $claim)) }}
{{- end }}
{{- end }}
{{- end }}
{{- $egress := .Values.networkPolicy.egress }}
{{- if and .Values.networkPolicy.enabled $egress.enabled }}
{{- $missing := list }}
{{- if and (eq .Values.database.kind "postgresql") (not $egress.database) }}
{{- $missing = append $missing "database (database.kind is postgresql)" }}
{{- end }}
{{- if and (eq (dig "storage" "kind" "local" .Values.config) "s3") (not $egress.storage) }}
{{- $missing = append $missing "storage (config.storage.kind is s3)" }}
{{- end }}
{{- if and .Values.operator.enabled (not $egress.kubernetesApi) }}
{{- $missing = append $missing "kubernetesApi (the operator watches the API server)" }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- range .Values.providers }}
{{- if and (ne .kind "local") (not $egress.providers) (not (has "providers" $missing)) }}
{{- $missing = append $missing "providers" }}
{{- end }}
{{- end }}
{{- end }}
{{- if $missing }}
{{- fail (printf "networkPolicy.egress.enabled blocks everything not listed; list the endpoints of networkPolicy.egress.%s (or set networkPolicy.egress.enabled=false)" (join ", networkPolicy.egress." $missing)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Egress rules to the endpoints of one networkPolicy.egress list ({cidr, except, ports} or
{to, ports}).
*/}}
{{- define "voiceslot.egressRules" -}}
{{- range . }}
- to:
    {{- if .to }}
    {{- toYaml .to | nindent 4 }}
    {{- else }}
    - ipBlock:
        cidr: {{ .cidr }}
        {{- with .except }}
        except:
          {{- toYaml . | nindent 10 }}
        {{- end }}
    {{- end }}
  ports:
    {{- range .ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- end }}

{{/*
Egress to cluster DNS (UDP and TCP).
*/}}
{{- define "voiceslot.dnsEgress" -}}
{{- with .Values.networkPolicy.egress.dns }}
- to:
    {{- toYaml .to | nindent 4 }}
  ports:
    {{- range .ports }}
    - port: {{ . }}
      protocol: UDP
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- end }}

{{/*
Environment shared by the allocator and the synthesizer.
*/}}
{{- define "voiceslot.serviceEnv" -}}
- name: VOICESLOT_CONFIG
  value: /etc/voiceslot/config.yaml
- name: VOICESLOT_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .Values.grpcPort) | quote }}
- name: VOICESLOT_METRICS_PORT
  value: {{ .Values.metricsPort | quote }}
- name: VOICESLOT_DATA_DIR
  value: /var/lib/voiceslot
- name: VOICESLOT_DEFAULT_PROVIDER
  value: {{ .Values.defaultProvider | quote }}
- name: VOICESLOT_PROVIDERS
  valueFrom:
    secretKeyRef:
      name: {{ include "voiceslot.secretName" . }}
      key: VOICESLOT_PROVIDERS
      optional: true
- name: VOICESLOT_AUTH__API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "voiceslot.secretName" . }}
      key: VOICESLOT_AUTH__API_KEYS
      optional: true
{{- if or .Values.secrets.existingSecret .Values.s3.accessKeyId }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "voiceslot.secretName" . }}
      key: AWS_ACCESS_KEY_ID
      optional: true
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "voiceslot.secretName" . }}
      key: AWS_SECRET_ACCESS_KEY
      optional: true
{{- end }}
{{- with (dig "storage" "region" "" .Values.config) }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
- name: XDG_DATA_HOME
  value: /var/lib/voiceslot/share
- name: XDG_CACHE_HOME
  value: /tmp/cache
- name: HOME
  value: /tmp
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if include "voiceslot.migrationJob" . }}
# The migration Job has brought the schema to head before this pod was created: wait for
# it (bounded) instead of migrating under replicas of the previous release still serving.
- name: VOICESLOT_MIGRATE_ON_START
  value: "false"
- name: VOICESLOT_SCHEMA_WAIT_S
  value: {{ .Values.migrations.schemaWaitSeconds | quote }}
{{- end }}
{{- end }}

{{/*
Volumes and mounts shared by the allocator and the synthesizer.
*/}}
{{- define "voiceslot.serviceVolumes" -}}
- name: config
  configMap:
    name: {{ include "voiceslot.configMapName" . }}
- name: data
{{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-data" (include "voiceslot.fullname" .)) .Values.persistence.existingClaim }}
{{- else }}
  emptyDir: {}
{{- end }}
- name: tmp
  emptyDir: {}
{{- end }}

{{- define "voiceslot.serviceVolumeMounts" -}}
- name: config
  mountPath: /etc/voiceslot
  readOnly: true
- name: data
  mountPath: /var/lib/voiceslot
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
gRPC probes. Call with (dict "ctx" $ "probes" .Values.allocator.probes).
*/}}
{{- define "voiceslot.grpcProbes" -}}
{{- $port := int .ctx.Values.grpcPort }}
{{- $p := .probes -}}
startupProbe:
  grpc:
    port: {{ $port }}
    service: {{ $p.readinessService | quote }}
  periodSeconds: {{ $p.startup.periodSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
  timeoutSeconds: {{ default 1 $p.startup.timeoutSeconds }}
  {{- with $p.startup.initialDelaySeconds }}
  initialDelaySeconds: {{ . }}
  {{- end }}
readinessProbe:
  grpc:
    port: {{ $port }}
    service: {{ $p.readinessService | quote }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
  timeoutSeconds: {{ default 2 $p.readiness.timeoutSeconds }}
  {{- with $p.readiness.initialDelaySeconds }}
  initialDelaySeconds: {{ . }}
  {{- end }}
livenessProbe:
  grpc:
    port: {{ $port }}
    service: {{ $p.livenessService | quote }}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
  timeoutSeconds: {{ default 5 $p.liveness.timeoutSeconds }}
  {{- with $p.liveness.initialDelaySeconds }}
  initialDelaySeconds: {{ . }}
  {{- end }}
{{- end }}

{{/*
What the operator does to VoiceSlots and to the events about them (RBAC rules).
*/}}
{{- define "voiceslot.operatorResourceRules" -}}
# Watch VoiceSlots and patch them (finalizers, kopf's annotations, spec defaults).
- apiGroups: ["voiceslot.io"]
  resources: ["voiceslots"]
  verbs:
    - get
    - list
    - watch
    - patch
    {{- if .Values.operator.mirrorVoiceSlots }}
    # Mirror the allocator's slots as VoiceSlots and remove them when the voice is gone.
    - create
    - delete
    {{- end }}
# Write observed state through the status subresource.
- apiGroups: ["voiceslot.io"]
  resources: ["voiceslots/status"]
  verbs: ["get", "patch"]
# Owner references with blockOwnerDeletion to VoiceSlots.
- apiGroups: ["voiceslot.io"]
  resources: ["voiceslots/finalizers"]
  verbs: ["update"]
# kopf posts handler progress and errors as events on the objects.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
NetworkPolicy pieces: metrics ingress (from networkPolicy.metrics; empty: any source)
and egress to the allocator's gRPC port.
*/}}
{{- define "voiceslot.metricsIngress" -}}
- ports:
    - port: metrics
      protocol: TCP
  {{- with .Values.networkPolicy.metrics }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{/*
A component's egress rules: DNS, the allocator when it calls it, and the endpoint lists.
Call with (dict "ctx" $ "allocator" true "lists" (list ...)); pipe through trim.
*/}}
{{- define "voiceslot.egress" -}}
{{ include "voiceslot.dnsEgress" .ctx }}
{{- if .allocator }}
{{ include "voiceslot.allocatorEgress" .ctx }}
{{- end }}
{{- range .lists }}
{{- include "voiceslot.egressRules" . }}
{{- end }}
{{- end }}

{{- define "voiceslot.allocatorEgress" -}}
- to:
    - podSelector:
        matchLabels:
          {{- include "voiceslot.selectorLabels" (dict "ctx" . "component" "allocator") | nindent 10 }}
  ports:
    - port: {{ .Values.grpcPort }}
      protocol: TCP
{{- end }}

{{/*
An alert's labels: its severity and monitoring.prometheusRule.alertLabels (routing).
Call with (dict "severity" "warning" "values" .Values.monitoring.prometheusRule).
*/}}
{{- define "voiceslot.alertLabels" -}}
severity: {{ .severity }}
{{- with .values.alertLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}
