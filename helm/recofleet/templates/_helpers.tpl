{{/*
Names. The prefix is cut to 36 characters so that the longest object name,
"<prefix>-train-ranker" (a CronJob, whose names Kubernetes limits to 52), stays valid.
*/}}
{{- define "recofleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 36 | trimSuffix "-" -}}
{{- end -}}

{{- define "recofleet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 36 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 36 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 36 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<prefix>-<component>": args root, component. */}}
{{- define "recofleet.componentName" -}}
{{- printf "%s-%s" (include "recofleet.fullname" .root) .component -}}
{{- end -}}

{{- define "recofleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "recofleet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "recofleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "recofleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: recofleet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector of one component's pods: args root, component. */}}
{{- define "recofleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "recofleet.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "recofleet.componentLabels" -}}
{{ include "recofleet.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The gRPC services, in the order the fleet starts them (services/runner.py). */}}
{{- define "recofleet.grpcServices" -}}
ingestion profiles retrieval ranking campaigns analytics
{{- end -}}

{{/* The services with Alembic migrations (services/common/migrations.py SERVICES). */}}
{{- define "recofleet.stores" -}}
analytics campaigns gateway profiles ranking retrieval
{{- end -}}

{{/*
What each process needs, read off its entry point: the stores it opens, whether it uses
the bus, the model store and the PII key, and the services it dials (campaigns calls
profiles and analytics, services/campaigns/server.py; the gateway calls them all).
*/}}
{{- define "recofleet.facts" -}}
ingestion: {module: services.ingestion, stores: [], bus: true, models: false, pii: true, calls: []}
profiles: {module: services.profiles, stores: [profiles], bus: true, models: false, pii: true, calls: []}
retrieval: {module: services.retrieval, stores: [retrieval], bus: true, models: true, pii: true, calls: []}
ranking: {module: services.ranking, stores: [ranking], bus: true, models: true, pii: false, calls: []}
campaigns: {module: services.campaigns, stores: [campaigns], bus: true, models: false, pii: true, calls: [profiles, analytics]}
analytics: {module: services.analytics, stores: [analytics], bus: true, models: false, pii: true, calls: []}
gateway: {module: services.gateway, stores: [gateway], bus: false, models: false, pii: true, calls: [ingestion, profiles, retrieval, ranking, campaigns, analytics]}
train: {module: services.cli, stores: [retrieval], bus: true, models: true, pii: true, calls: []}
train-ranker: {module: services.cli, stores: [], bus: true, models: true, pii: false, calls: []}
migrations: {module: "", stores: [analytics, campaigns, gateway, profiles, ranking, retrieval], bus: false, models: false, pii: false, calls: []}
{{- end -}}

{{/* The image of a block (its overrides over .Values.image): args root, block. */}}
{{- define "recofleet.image" -}}
{{- $image := merge (deepCopy (default dict .block.image)) .root.Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{- define "recofleet.imagePullPolicy" -}}
{{- (merge (deepCopy (default dict .block.image)) .root.Values.image).pullPolicy -}}
{{- end -}}

{{/* The address a service is dialled at: its Service's name in the release's namespace. */}}
{{- define "recofleet.dialAddress" -}}
{{- $port := (index .root.Values .component).port -}}
{{- printf "%s.%s.svc:%v" (include "recofleet.componentName" .) .root.Release.Namespace $port -}}
{{- end -}}

{{/* The search_path schema of a store under schema isolation. */}}
{{- define "recofleet.schema" -}}
{{- printf "%s%s" .root.Values.postgresql.schemaPrefix .store -}}
{{- end -}}

{{/*
The environment of a process: args root, component, facts, env (the block's plain env),
listen (the gRPC port it serves, if any). Secrets come only through secretKeyRef or envFrom.
*/}}
{{- define "recofleet.env" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $f := .facts -}}
- name: RECOFLEET_DATA_DIR
  value: /data
- name: RECOFLEET_LOG_LEVEL
  value: {{ $v.fleet.logLevel | quote }}
- name: RECOFLEET_LOG_FORMAT
  value: {{ $v.fleet.logFormat | quote }}
{{- with $v.tracing.otlpEndpoint }}
- name: RECOFLEET_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: RECOFLEET_TRACE_SAMPLE_RATIO
  value: {{ $v.tracing.sampleRatio | quote }}
{{- end }}
- name: RECOFLEET_BUS_RETENTION_HOURS
  value: {{ $v.fleet.busRetentionHours | quote }}
- name: RECOFLEET_PROCESSED_RETENTION_HOURS
  value: {{ $v.fleet.processedRetentionHours | quote }}
- name: RECOFLEET_METRICS_PORT_OFFSET
  value: {{ $v.fleet.metricsPortOffset | quote }}
{{- if $f.bus }}
- name: RECOFLEET_BUS
  value: kafka
- name: RECOFLEET_KAFKA_BOOTSTRAP_SERVERS
  value: {{ $v.kafka.bootstrapServers | quote }}
- name: RECOFLEET_KAFKA_CLIENT_ID
  value: {{ include "recofleet.componentName" . | quote }}
- name: RECOFLEET_KAFKA_PARTITIONS
  value: {{ $v.kafka.partitions | quote }}
- name: RECOFLEET_KAFKA_REPLICATION_FACTOR
  value: {{ $v.kafka.replicationFactor | quote }}
{{- with $v.kafka.securityProtocol }}
- name: RECOFLEET_KAFKA_SECURITY_PROTOCOL
  value: {{ . | quote }}
{{- end }}
{{- with $v.kafka.saslMechanism }}
- name: RECOFLEET_KAFKA_SASL_MECHANISM
  value: {{ . | quote }}
{{- end }}
{{- if $v.kafka.tls.existingSecret }}
- name: RECOFLEET_KAFKA_SSL_CAFILE
  value: /etc/recofleet/kafka-tls/ca.crt
{{- if $v.kafka.tls.clientCertificate }}
- name: RECOFLEET_KAFKA_SSL_CERTFILE
  value: /etc/recofleet/kafka-tls/tls.crt
- name: RECOFLEET_KAFKA_SSL_KEYFILE
  value: /etc/recofleet/kafka-tls/tls.key
{{- end }}
{{- end }}
{{- end }}
{{- if $f.pii }}
- name: RECOFLEET_PII_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $v.pii.existingSecret | quote }}
      key: {{ $v.pii.key | quote }}
{{- end }}
{{- with .listen }}
{{- /* A service listens where its own *_ADDR says: every interface of its pod. */}}
- name: {{ printf "RECOFLEET_%s_ADDR" ($.component | upper) }}
  value: {{ printf "0.0.0.0:%v" . | quote }}
{{- end }}
{{- range $f.calls }}
- name: {{ printf "RECOFLEET_%s_ADDR" (upper .) }}
  value: {{ include "recofleet.dialAddress" (dict "root" $root "component" .) | quote }}
{{- end }}
{{- if $f.stores }}
{{- if eq $v.postgresql.isolation "schema" }}
{{- /* One URL from the Secret, then each store's own schema appended to it: Kubernetes
       expands $(POSTGRESQL_BASE_URL) from the variable above, so the URL stays secret. */}}
- name: POSTGRESQL_BASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.postgresql.existingSecret | quote }}
      key: {{ $v.postgresql.urlKey | quote }}
{{- $separator := ternary "&" "?" $v.postgresql.urlHasQuery }}
{{- range $f.stores }}
- name: {{ printf "RECOFLEET_%s_DATABASE_URL" (upper .) }}
  value: {{ printf "$(POSTGRESQL_BASE_URL)%soptions=-csearch_path%%3D%s" $separator (include "recofleet.schema" (dict "root" $root "store" .)) | quote }}
{{- end }}
{{- else }}
{{- range $f.stores }}
- name: {{ printf "RECOFLEET_%s_DATABASE_URL" (upper .) }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.postgresql.existingSecret | quote }}
      key: {{ printf "%s-url" . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- if $f.models }}
- name: RECOFLEET_MODEL_STORE_KIND
  value: s3
- name: RECOFLEET_MODEL_STORE_S3_BUCKET
  value: {{ $v.modelStore.s3.bucket | quote }}
{{- with $v.modelStore.s3.endpoint }}
- name: RECOFLEET_MODEL_STORE_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with $v.modelStore.s3.region }}
- name: RECOFLEET_MODEL_STORE_S3_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $v.modelStore.s3.prefix }}
- name: RECOFLEET_MODEL_STORE_S3_PREFIX
  value: {{ . | quote }}
{{- end }}
{{- with $v.modelStore.s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . | quote }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . | quote }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- end }}
{{- range $name, $value := merge (deepCopy (default dict .env)) $v.fleet.env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* envFrom of a process: the Kafka Secret where it uses the bus, then the block's own. */}}
{{- define "recofleet.envFrom" -}}
{{- if and .facts.bus .root.Values.kafka.existingSecret }}
- secretRef:
    name: {{ .root.Values.kafka.existingSecret | quote }}
{{- end }}
{{- with .block.envFrom }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod-level fields every pod shares: args root, block. */}}
{{- define "recofleet.podCommon" -}}
{{- /* No pod calls the Kubernetes API: no token is mounted. */ -}}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . | quote }}
  {{- end }}
{{- end }}
{{- with .block.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .block.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .block.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .block.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod template metadata: args root, component, block. */}}
{{- define "recofleet.podMetadata" -}}
labels:
  {{- include "recofleet.componentLabels" . | nindent 2 }}
  {{- with .block.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .block.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The writable places of a read-only pod, and the Kafka TLS files: args root, facts. */}}
{{- define "recofleet.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /data
{{- if and .facts.bus .root.Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: /etc/recofleet/kafka-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "recofleet.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .root.Values.scratch.tmpSizeLimit }}
- name: data
  emptyDir:
    sizeLimit: {{ .root.Values.scratch.dataSizeLimit }}
{{- if and .facts.bus .root.Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .root.Values.kafka.tls.existingSecret | quote }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* The ports of the Kafka brokers: those in bootstrapServers, and the extra ones. */}}
{{- define "recofleet.kafkaPorts" -}}
{{- $ports := list -}}
{{- range splitList "," .Values.kafka.bootstrapServers -}}
{{- $port := regexFind "[0-9]+$" (trim .) -}}
{{- if $port }}{{ $ports = append $ports (atoi $port) }}{{ end -}}
{{- end -}}
{{- range .Values.networkPolicy.egress.kafka.extraPorts }}{{ $ports = append $ports (int .) }}{{ end -}}
{{- $ports | uniq | toJson -}}
{{- end -}}

{{/* The ports of the model store: the endpoint's (443 for AWS S3), and the extra ones. */}}
{{- define "recofleet.s3Ports" -}}
{{- $ports := list 443 -}}
{{- with .Values.modelStore.s3.endpoint -}}
{{- $url := urlParse . -}}
{{- $port := regexFind ":[0-9]+$" $url.host | trimPrefix ":" -}}
{{- if $port -}}
{{- $ports = list (atoi $port) -}}
{{- else if eq $url.scheme "http" -}}
{{- $ports = list 80 -}}
{{- end -}}
{{- end -}}
{{- range .Values.networkPolicy.egress.s3.extraPorts }}{{ $ports = append $ports (int .) }}{{ end -}}
{{- $ports | uniq | toJson -}}
{{- end -}}

{{/* One egress rule: args ports (list), protocols (list), to (peers). */}}
{{- define "recofleet.egressRule" -}}
- ports:
  {{- range $port := .ports }}
  {{- range $protocol := $.protocols }}
    - port: {{ $port }}
      protocol: {{ $protocol }}
  {{- end }}
  {{- end }}
  {{- with .to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* The egress of a process: DNS, then Kafka, PostgreSQL, the bucket and the services it
     calls, each only where it uses them. Args root, facts. */}}
{{- define "recofleet.egress" -}}
{{- $root := .root -}}
{{- $net := $root.Values.networkPolicy.egress -}}
{{ include "recofleet.egressRule" (dict "ports" $net.dns.ports "protocols" (list "UDP" "TCP") "to" $net.dns.to) }}
{{- if .facts.bus }}
{{ include "recofleet.egressRule" (dict "ports" (include "recofleet.kafkaPorts" $root | fromJsonArray) "protocols" (list "TCP") "to" $net.kafka.to) }}
{{- end }}
{{- if .facts.stores }}
{{ include "recofleet.egressRule" (dict "ports" $net.postgresql.ports "protocols" (list "TCP") "to" $net.postgresql.to) }}
{{- end }}
{{- if .facts.models }}
{{ include "recofleet.egressRule" (dict "ports" (include "recofleet.s3Ports" $root | fromJsonArray) "protocols" (list "TCP") "to" $net.s3.to) }}
{{- end }}
{{- range .facts.calls }}
- to:
    - podSelector:
        matchLabels:
          {{- include "recofleet.selectorLabels" (dict "root" $root "component" .) | nindent 10 }}
  ports:
    - port: {{ (index $root.Values .).port }}
      protocol: TCP
{{- end }}
{{- end -}}

{{/* Names the chart sets itself, which a block's plain env may not override. */}}
{{- define "recofleet.reservedEnv" -}}
^(RECOFLEET_(DATA_DIR|BUS|PII_SECRET|ADMIN_KEY|SEGMENT_WRITE_KEY|LOG_LEVEL|LOG_FORMAT|OTLP_ENDPOINT|TRACE_SAMPLE_RATIO|METRICS_PORT_OFFSET|BUS_RETENTION_HOURS|PROCESSED_RETENTION_HOURS|GATEWAY_HOST|GATEWAY_PORT|GATEWAY_TRUSTED_PROXIES|KAFKA_BOOTSTRAP_SERVERS|KAFKA_CLIENT_ID|KAFKA_PARTITIONS|KAFKA_REPLICATION_FACTOR|KAFKA_SECURITY_PROTOCOL|KAFKA_SASL_MECHANISM|KAFKA_SSL_CAFILE|KAFKA_SSL_CERTFILE|KAFKA_SSL_KEYFILE|[A-Z]+_ADDR|[A-Z]+_DATABASE_URL|MODEL_STORE_[A-Z0-9_]+)|POSTGRESQL_BASE_URL|AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY)$
{{- end -}}
