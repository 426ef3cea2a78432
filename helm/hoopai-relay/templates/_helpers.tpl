{{/*
Expand the name of the chart.
*/}}
{{- define "hoopai-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "hoopai-relay.fullname" -}}
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
Create chart name and version as used by the chart label.
*/}}
{{- define "hoopai-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "hoopai-relay.labels" -}}
helm.sh/chart: {{ include "hoopai-relay.chart" . }}
{{ include "hoopai-relay.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hoopai-relay
{{- end }}

{{/*
Selector labels
*/}}
{{- define "hoopai-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hoopai-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "hoopai-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hoopai-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Where the pod sees its configuration: one read-only projected volume holding relay.toml,
routes.toml, keys/ (ConfigMaps) and the files of the existing Secrets (kafka/, tls/): the
Kafka CA, client certificate and key, SASL password and OAuth client secret.
*/}}
{{- define "hoopai-relay.configDir" -}}
/etc/hoopai-relay
{{- end }}

{{/*
"https" when the relay itself serves TLS on its webhook port, else "http".
*/}}
{{- define "hoopai-relay.scheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/*
The settings the relay runs with, as a dict: the user's `config` (empty and null values
dropped: the relay's default applies), then the keys the chart owns (ports, and the paths
of what it mounts).
*/}}
{{- define "hoopai-relay.settings" -}}
{{- $dir := include "hoopai-relay.configDir" . }}
{{- $settings := dict }}
{{- range $key, $value := .Values.config }}
{{- if not (or (kindIs "invalid" $value) (and (kindIs "string" $value) (eq $value ""))) }}
{{- $_ := set $settings $key $value }}
{{- end }}
{{- end }}
{{- $_ := set $settings "http_port" .Values.containerPorts.http }}
{{- $_ = set $settings "metrics_port" .Values.containerPorts.metrics }}
{{- if .Values.tls.enabled }}
{{- $_ = set $settings "tls_cert_file" (printf "%s/tls/tls.crt" $dir) }}
{{- $_ = set $settings "tls_key_file" (printf "%s/tls/tls.key" $dir) }}
{{- end }}
{{- if .Values.publicKeys }}
{{- $keys := list }}
{{- range $name := keys .Values.publicKeys | sortAlpha }}
{{- $keys = append $keys (printf "%s/keys/%s" $dir $name) }}
{{- end }}
{{- $_ = set $settings "public_keys" $keys }}
{{- end }}
{{- if .Values.routes }}
{{- $_ = set $settings "routes_file" (printf "%s/routes.toml" $dir) }}
{{- end }}
{{- with .Values.kafka.tls }}
{{- if .existingSecret }}
{{- if .caKey }}
{{- $_ = set $settings "kafka_ssl_cafile" (printf "%s/kafka/ca.crt" $dir) }}
{{- end }}
{{- if .certKey }}
{{- $_ = set $settings "kafka_ssl_certfile" (printf "%s/kafka/tls.crt" $dir) }}
{{- $_ = set $settings "kafka_ssl_keyfile" (printf "%s/kafka/tls.key" $dir) }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.kafka.sasl.existingSecret }}
{{- $_ = set $settings "kafka_sasl_password_file" (printf "%s/kafka/password" $dir) }}
{{- end }}
{{- if .Values.kafka.oauth.existingSecret }}
{{- $_ = set $settings "kafka_oauth_client_secret_file" (printf "%s/kafka/oauth-client-secret" $dir) }}
{{- end }}
{{- toJson $settings }}
{{- end }}

{{/*
relay.toml. Each value is written as JSON, which for the scalars and flat arrays the
schema allows is also valid TOML, and keeps integers integers (Helm's toToml would write
8080 as 8080.0, which the relay refuses for an integer setting).
*/}}
{{- define "hoopai-relay.relayToml" -}}
# hoopai-relay settings, rendered by the Helm chart from `config` and the chart's own keys.
{{- range $key, $value := include "hoopai-relay.settings" . | fromJson }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- $dir := include "hoopai-relay.configDir" . }}
{{- range $name, $source := .Values.workflows }}

[workflows.{{ $name }}]
{{- $files := list }}
{{- range $source.tokenKeys }}
{{- $files = append $files (printf "%s/workflows/%s/%s" $dir $name .) }}
{{- end }}
token_files = {{ toJson $files }}
{{- range $value, $key := dict "tokenHeader" "token_header" "tokenQuery" "token_query" "topic" "topic" "idempotency" "idempotency" "idempotencyField" "idempotency_field" }}
{{- with (get $source $value) }}
{{ $key }} = {{ toJson . }}
{{- end }}
{{- end }}
{{- if hasKey $source "key" }}
key = {{ toJson $source.key }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The PromQL label matchers picking this release's series.
*/}}
{{- define "hoopai-relay.metricsSelector" -}}
{{- if .Values.prometheusRule.selector }}
{{- .Values.prometheusRule.selector }}
{{- else }}
{{- printf "job=%q, namespace=%q" (include "hoopai-relay.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
The workload's kind: a StatefulSet when the spool has a volume of its own per pod.
*/}}
{{- define "hoopai-relay.workloadKind" -}}
{{- if .Values.persistence.enabled }}StatefulSet{{ else }}Deployment{{ end }}
{{- end }}

{{/*
Refuse half-set values, with a message naming the value to fix. Included by the
Deployment, so that every render checks them.
*/}}
{{- define "hoopai-relay.validate" -}}
{{- $config := .Values.config }}
{{- $grace := $config.shutdown_grace_s | default 25.0 | float64 }}
{{- $drain := $config.drain_delay_s | default 5.0 | float64 }}
{{- if le (float64 .Values.terminationGracePeriodSeconds) $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be greater than config.shutdown_grace_s (%v): Kubernetes kills the pod at the end of it" .Values.terminationGracePeriodSeconds $grace) }}
{{- end }}
{{- if le $grace $drain }}
{{- fail (printf "config.shutdown_grace_s (%v) must be greater than config.drain_delay_s (%v)" $grace $drain) }}
{{- end }}
{{- $protocol := $config.kafka_security_protocol | default "PLAINTEXT" | upper }}
{{- with .Values.kafka.sasl }}
{{- if and .existingSecret (not .passwordKey) }}
{{- fail "kafka.sasl.existingSecret is set but kafka.sasl.passwordKey is empty: name the key of the password in that Secret" }}
{{- end }}
{{- if and .existingSecret (not (hasPrefix "SASL_" $protocol)) }}
{{- fail (printf "kafka.sasl.existingSecret is set but config.kafka_security_protocol is %s: use SASL_SSL or SASL_PLAINTEXT" $protocol) }}
{{- end }}
{{- end }}
{{- $mechanism := $config.kafka_sasl_mechanism | default "PLAIN" | upper }}
{{- $oauth := and (hasPrefix "SASL_" $protocol) (eq $mechanism "OAUTHBEARER") }}
{{- if and (hasPrefix "SASL_" $protocol) (not $oauth) }}
{{- if not $config.kafka_sasl_username }}
{{- fail (printf "config.kafka_security_protocol is %s but config.kafka_sasl_username is empty" $protocol) }}
{{- end }}
{{- $envPassword := false }}
{{- range .Values.extraEnv }}
{{- if eq .name "RELAY_KAFKA_SASL_PASSWORD" }}{{ $envPassword = true }}{{ end }}
{{- end }}
{{- if not (or .Values.kafka.sasl.existingSecret $envPassword) }}
{{- fail (printf "config.kafka_security_protocol is %s but no password: set kafka.sasl.existingSecret (or RELAY_KAFKA_SASL_PASSWORD in extraEnv, from a secretKeyRef)" $protocol) }}
{{- end }}
{{- end }}
{{- with .Values.kafka.oauth }}
{{- if and .existingSecret (not .clientSecretKey) }}
{{- fail "kafka.oauth.existingSecret is set but kafka.oauth.clientSecretKey is empty: name the key of the client secret in that Secret" }}
{{- end }}
{{- if and .existingSecret (not $oauth) }}
{{- fail (printf "kafka.oauth.existingSecret is set but the SASL mechanism is %s over %s: use config.kafka_sasl_mechanism OAUTHBEARER with SASL_SSL" $mechanism $protocol) }}
{{- end }}
{{- end }}
{{- if and $oauth (not $config.kafka_msk_iam_region) }}
{{- if not (and $config.kafka_oauth_token_endpoint $config.kafka_oauth_client_id) }}
{{- fail "config.kafka_sasl_mechanism is OAUTHBEARER but config.kafka_oauth_token_endpoint or config.kafka_oauth_client_id is empty (or set config.kafka_msk_iam_region for MSK IAM)" }}
{{- end }}
{{- $envSecret := false }}
{{- range .Values.extraEnv }}
{{- if eq .name "RELAY_KAFKA_OAUTH_CLIENT_SECRET" }}{{ $envSecret = true }}{{ end }}
{{- end }}
{{- if not (or .Values.kafka.oauth.existingSecret $envSecret) }}
{{- fail "config.kafka_sasl_mechanism is OAUTHBEARER but no client secret: set kafka.oauth.existingSecret (or RELAY_KAFKA_OAUTH_CLIENT_SECRET in extraEnv, from a secretKeyRef)" }}
{{- end }}
{{- end }}
{{- with .Values.kafka.tls }}
{{- if ne (empty .certKey) (empty .keyKey) }}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey go together (mutual TLS): set both or neither" }}
{{- end }}
{{- if and (not .existingSecret) (or .certKey .keyKey) }}
{{- fail "kafka.tls.certKey/keyKey are set but kafka.tls.existingSecret is empty: name the Secret holding them" }}
{{- end }}
{{- if and .existingSecret (not (or .caKey .certKey)) }}
{{- fail "kafka.tls.existingSecret is set but neither kafka.tls.caKey nor kafka.tls.certKey: say which keys to mount" }}
{{- end }}
{{- if and .existingSecret (not (has $protocol (list "SSL" "SASL_SSL"))) }}
{{- fail (printf "kafka.tls.existingSecret is set but config.kafka_security_protocol is %s: use SSL or SASL_SSL" $protocol) }}
{{- end }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled is true but tls.existingSecret is empty: name a kubernetes.io/tls Secret" }}
{{- end }}
{{- if and .Values.tls.existingSecret (not .Values.tls.enabled) }}
{{- fail "tls.existingSecret is set but tls.enabled is false: enable it, or empty the Secret's name" }}
{{- end }}
{{- with .Values.ingress }}
{{- if .enabled }}
{{- if not .hosts }}
{{- fail "ingress.enabled is true but ingress.hosts is empty: list the host names HighLevel posts to" }}
{{- end }}
{{- range $i, $tls := .tls }}
{{- if not $tls.hosts }}
{{- fail (printf "ingress.tls[%d] has no hosts: list the hosts its certificate serves" $i) }}
{{- end }}
{{- range $tls.hosts }}
{{- if not (has . $.Values.ingress.hosts) }}
{{- fail (printf "ingress.tls[%d].hosts: %s is not in ingress.hosts" $i .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.podDisruptionBudget }}
{{- if .enabled }}
{{- $min := not (or (kindIs "invalid" .minAvailable) (eq (toString .minAvailable) "")) }}
{{- $max := not (or (kindIs "invalid" .maxUnavailable) (eq (toString .maxUnavailable) "")) }}
{{- if and $min $max }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both: empty the other" }}
{{- end }}
{{- if not (or $min $max) }}
{{- fail "podDisruptionBudget.enabled is true but neither minAvailable nor maxUnavailable is set" }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.autoscaling }}
{{- if and .enabled (gt (int .minReplicas) (int .maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%v) is greater than autoscaling.maxReplicas (%v)" .minReplicas .maxReplicas) }}
{{- end }}
{{- end }}
{{- range $name, $source := .Values.workflows }}
{{- if and $source.tokenHeader $source.tokenQuery }}
{{- fail (printf "workflows.%s: tokenHeader and tokenQuery: set one of them" $name) }}
{{- end }}
{{- if and (eq ($source.idempotency | default "") "field") (not $source.idempotencyField) }}
{{- fail (printf "workflows.%s: idempotency field needs idempotencyField" $name) }}
{{- end }}
{{- end }}
{{- with .Values.networkPolicy }}
{{- if and .enabled (not (or .metrics.namespaceSelector .metrics.podSelector)) }}
{{- fail "networkPolicy.metrics needs a namespaceSelector or a podSelector: the peers allowed to scrape /metrics" }}
{{- end }}
{{- end }}
{{- end }}
