{{- /*
The relay's configuration volume (settings, routes, keys, the files of the Secrets it
needs): one definition for the relay's pods and the spool-drain Job.
*/}}
{{- define "hoopai-relay.configVolume" -}}
# One read-only projected volume: the ConfigMaps, and the files of the existing
# Secrets the relay needs. Group-readable by fsGroup, which the relay runs as.
- name: config
  projected:
    defaultMode: 0440
    sources:
      - configMap:
          name: {{ include "hoopai-relay.fullname" . }}
          items:
            - key: relay.toml
              path: relay.toml
            {{- if .Values.routes }}
            - key: routes.toml
              path: routes.toml
            {{- end }}
      {{- if .Values.publicKeys }}
      - configMap:
          name: {{ include "hoopai-relay.fullname" . }}-keys
          items:
            {{- range $name := keys .Values.publicKeys | sortAlpha }}
            - key: {{ $name }}
              path: keys/{{ $name }}
            {{- end }}
      {{- end }}
      {{- with .Values.kafka.sasl }}
      {{- if .existingSecret }}
      - secret:
          name: {{ .existingSecret }}
          items:
            - key: {{ .passwordKey }}
              path: kafka/password
      {{- end }}
      {{- end }}
      {{- with .Values.kafka.oauth }}
      {{- if .existingSecret }}
      - secret:
          name: {{ .existingSecret }}
          items:
            - key: {{ .clientSecretKey }}
              path: kafka/oauth-client-secret
      {{- end }}
      {{- end }}
      {{- with .Values.kafka.tls }}
      {{- if .existingSecret }}
      - secret:
          name: {{ .existingSecret }}
          items:
            {{- if .caKey }}
            - key: {{ .caKey }}
              path: kafka/ca.crt
            {{- end }}
            {{- if .certKey }}
            - key: {{ .certKey }}
              path: kafka/tls.crt
            - key: {{ .keyKey }}
              path: kafka/tls.key
            {{- end }}
      {{- end }}
      {{- end }}
      {{- range $name, $source := .Values.workflows }}
      - secret:
          name: {{ $source.existingSecret }}
          items:
            {{- range $source.tokenKeys }}
            - key: {{ . }}
              path: workflows/{{ $name }}/{{ . }}
            {{- end }}
      {{- end }}
      {{- if .Values.tls.enabled }}
      - secret:
          name: {{ .Values.tls.existingSecret }}
          items:
            - key: tls.crt
              path: tls/tls.crt
            - key: tls.key
              path: tls/tls.key
      {{- end }}
{{- end }}
