{{- /* Names are cut at 50 characters so that the longest derived name
(<fullname>-webhook-tls) stays a valid 63-character object name. */ -}}
{{- define "kco.name" -}}{{ default "kco" .Values.nameOverride | trunc 50 | trimSuffix "-" }}{{- end -}}

{{- define "kco.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{ .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else -}}
{{- $name := include "kco.name" . -}}
{{- if contains $name .Release.Name -}}
{{ .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else -}}
{{ printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kco.labels" -}}
{{ include "kco.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kco
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kco.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kco.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* The replicas' ServiceAccount: the chart's own, or one the platform team
made. Never the namespace's default account: the chart binds KCO's rights to it. */ -}}
{{- define "kco.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ default (include "kco.fullname" .) .Values.serviceAccount.name }}
{{- else -}}
{{ required "serviceAccount.name: name the ServiceAccount to bind KCO's rights to when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{- define "kco.webhookService" -}}{{ include "kco.fullname" . }}-webhook{{- end -}}
{{- define "kco.webhookSecret" -}}{{ include "kco.fullname" . }}-webhook-tls{{- end -}}
{{- define "kco.configName" -}}{{ include "kco.fullname" . }}-config{{- end -}}

{{- /* A digest pins the image and wins over the tag. */ -}}
{{- define "kco.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- /* The PodDisruptionBudget's one bound, or nothing when it could block a
node drain: a minAvailable of every replica (or more) never allows an eviction. */ -}}
{{- define "kco.pdbBound" -}}
{{- $pdb := .Values.podDisruptionBudget -}}
{{- if and $pdb.enabled (gt (int .Values.replicaCount) 1) -}}
{{- if not (kindIs "invalid" $pdb.minAvailable) -}}
{{- if lt (int $pdb.minAvailable) (int .Values.replicaCount) -}}
minAvailable: {{ $pdb.minAvailable }}
{{- end -}}
{{- else -}}
maxUnavailable: {{ $pdb.maxUnavailable }}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* A `helm test` Job running `kco <args>` from KCO's own image (it has no
shell or curl). Its pod carries none of the replicas' selector labels, so no
Service, PDB or NetworkPolicy selects it as a replica; it passes the restricted
Pod Security Standard. dict: root, name, args, and an optional volume mounted at
/etc/kco/<volume name>. */ -}}
{{- define "kco.testJob" -}}
{{- $root := .root -}}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "kco.fullname" $root }}-test-{{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    app.kubernetes.io/name: {{ include "kco.name" $root }}-test
    app.kubernetes.io/instance: {{ $root.Release.Name }}
    app.kubernetes.io/managed-by: {{ $root.Release.Service }}
    helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
  annotations:
    helm.sh/hook: test
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  backoffLimit: 2
  activeDeadlineSeconds: 120
  ttlSecondsAfterFinished: 600
  template:
    metadata:
      labels:
        app.kubernetes.io/name: {{ include "kco.name" $root }}-test
        app.kubernetes.io/instance: {{ $root.Release.Name }}
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets: {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        runAsNonRoot: true
        runAsUser: 1000
        runAsGroup: 1000
        seccompProfile: {type: RuntimeDefault}
      containers:
      - name: {{ .name }}
        image: {{ include "kco.image" $root }}
        imagePullPolicy: {{ $root.Values.image.pullPolicy }}
        args: {{- toYaml .args | nindent 8 }}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          runAsNonRoot: true
          capabilities: {drop: [ALL]}
        resources:
          requests: {cpu: 10m, memory: 16Mi}
          limits: {cpu: 100m, memory: 64Mi}
        {{- with .volume }}
        volumeMounts:
        - {name: {{ .name }}, mountPath: /etc/kco/{{ .name }}, readOnly: true}
        {{- end }}
      {{- with .volume }}
      volumes: {{- toYaml (list .) | nindent 6 }}
      {{- end }}
{{- end -}}
