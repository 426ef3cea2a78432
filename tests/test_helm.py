"""The Helm chart: lint, schema, valid Kubernetes objects, the wiring the relay depends on.

Helm comes from ``$HELM`` (the Makefile exports it), else ``helm`` on PATH. Every object the
chart renders is validated against the Kubernetes 1.30 JSON schemas that kubernetes-validate
ships, offline. The Prometheus Operator's ServiceMonitor and PrometheusRule are CRDs, not in
those schemas, so their shape is checked here by hand. Only the last test needs Kafka: it
scrapes a real relay for every metric name the alerts and the dashboard use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate  # type: ignore[import-untyped, unused-ignore]
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from relay.app import WEBHOOK_PATH, WORKFLOW_PATH, load_keys, load_routing
from relay.errors import PublishError
from relay.ingress.signatures import Reason
from relay.metrics import Outcome
from relay.settings import SECRET_SETTINGS, Settings
from relay.spool.frames import MAGIC, segment_name
from relay.tools.deliveries import as_delivery, sign_ed25519
from tests.helmutil import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    Obj,
    annotations_of,
    find,
    only,
    render,
    run_helm,
    template,
)
from tests.relayutil import ROOT, StartRelay, scrape

CI_VALUES = {p.name.removesuffix("-values.yaml"): p for p in sorted(CHART.glob("ci/*-values.yaml"))}
VARIANTS = {"default": None, **CI_VALUES}
CONFIG_DIR = "/etc/hoopai-relay"
CRD_KINDS = frozenset({"ServiceMonitor", "PrometheusRule"})
#: settings the chart writes itself, from containerPorts, tls, publicKeys, routes and kafka
CHART_OWNED = frozenset(
    {
        "http_port",
        "metrics_port",
        "tls_cert_file",
        "tls_key_file",
        "public_keys",
        "routes_file",
        "kafka_ssl_cafile",
        "kafka_ssl_certfile",
        "kafka_ssl_keyfile",
        "kafka_sasl_password_file",
        "kafka_oauth_client_secret_file",
        "spool_dir",  # RELAY_SPOOL_DIR, from spool.mountPath
        "workflows",  # [workflows.<name>] tables, from workflows
    }
)
#: labels Prometheus adds to every series of a target: never in a scrape, fine in a selector
TARGET_LABELS = frozenset({"job", "namespace", "instance", "pod", "service", "container"})
#: the closed sets of label values the relay can export
LABEL_VALUES = {
    "outcome": {o.value for o in Outcome},
    "reason": {r.value for r in Reason},
    "cause": {cls.label for cls in PublishError.__subclasses__()},
    "kind": {"torn_tail", "moved_aside"},
}
#: the alerts rendered only with the spool on
SPOOL_ALERTS = frozenset(
    {"HoopaiRelaySpoolNotDraining", "HoopaiRelaySpoolNearFull", "HoopaiRelaySpoolDamaged"}
)
DURATION = re.compile(r"([0-9]+(ms|s|m|h|d|w|y))+")
METRIC = re.compile(r"\b(relay_[a-z0-9_]+)(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
PEM = (ROOT / "relay" / "ingress" / "keys" / "highlevel-ed25519.pem").read_text(encoding="utf-8")


def workload(objects: list[Obj]) -> Obj:
    """The Deployment, or the StatefulSet with persistence on."""
    kinds = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    assert len(kinds) == 1, [o["kind"] for o in kinds]
    return kinds[0]


def pod_template(objects: list[Obj]) -> Obj:
    """The workload's pod template."""
    found: Obj = workload(objects)["spec"]["template"]
    return found


def relay_container(objects: list[Obj]) -> Obj:
    """The relay's container."""
    (container,) = pod_template(objects)["spec"]["containers"]
    found: Obj = container
    return found


def helm_test_pod(objects: list[Obj]) -> Obj:
    """The `helm test` pod."""
    (pod,) = [o for o in find(objects, "Pod") if annotations_of(o).get("helm.sh/hook") == "test"]
    return pod


def relay_toml(objects: list[Obj]) -> dict[str, Any]:
    """The relay.toml the chart renders, parsed."""
    configmap = next(o for o in find(objects, "ConfigMap") if "relay.toml" in o["data"])
    return tomllib.loads(configmap["data"]["relay.toml"])


def values_schema() -> Obj:
    """The chart's values.schema.json."""
    schema: Obj = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    return schema


variants = pytest.mark.parametrize("values_file", VARIANTS.values(), ids=VARIANTS.keys())


# --- lint and validity ---------------------------------------------------------------------


@variants
def test_lint_strict(values_file: Path | None) -> None:
    """`helm lint --strict` passes, and no `fail` fired (lint reports those only as INFO)."""
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values_file)] if values_file else [])
    result = run_helm(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Fail:" not in result.stdout + result.stderr


def test_ci_values_exist() -> None:
    """There is an all-features-on values file, and at least one other."""
    assert "all-on" in CI_VALUES
    assert len(CI_VALUES) >= 2


def _balanced(expr: str) -> bool:
    """Brackets balance in a PromQL expression, ignoring quoted strings."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    depth = {"(": 0, "{": 0, "[": 0}
    closing = {")": "(", "}": "{", "]": "["}
    for char in stripped:
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            if depth[closing[char]] < 0:
                return False
    return not any(depth.values())


def check_service_monitor(obj: Obj) -> None:
    """A monitoring.coreos.com/v1 ServiceMonitor, by the fields the operator reads."""
    spec = obj["spec"]
    assert set(spec) <= {"endpoints", "selector", "namespaceSelector", "jobLabel"}
    assert spec["selector"]["matchLabels"]
    assert spec["namespaceSelector"]["matchNames"] == [NAMESPACE]
    fields = {"port", "path", "scheme", "interval", "scrapeTimeout"}
    fields |= {"relabelings", "metricRelabelings"}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= fields
        assert endpoint["scheme"] in ("http", "https")
        for duration in ("interval", "scrapeTimeout"):
            if duration in endpoint:
                assert DURATION.fullmatch(endpoint[duration])


def check_prometheus_rule(obj: Obj) -> None:
    """A monitoring.coreos.com/v1 PrometheusRule: groups of alerts with sane fields."""
    (group,) = obj["spec"]["groups"]
    assert set(group) <= {"name", "rules", "interval"}
    names = [rule["alert"] for rule in group["rules"]]
    assert len(names) == len(set(names))
    for rule in group["rules"]:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
        assert re.fullmatch(r"HoopaiRelay[A-Z][A-Za-z0-9]+", rule["alert"])
        assert isinstance(rule["expr"], str)
        assert _balanced(rule["expr"]), rule["alert"]
        assert DURATION.fullmatch(rule["for"])
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


@variants
def test_every_object_is_valid_for_kubernetes(values_file: Path | None) -> None:
    """Each object validates (strictly: no unknown field) against Kubernetes 1.30's schemas."""
    objects = render(values_file)
    for obj in objects:
        assert obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        if obj["kind"] in CRD_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            checker = check_service_monitor if obj["kind"] == "ServiceMonitor" else None
            (checker or check_prometheus_rule)(obj)
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}")


def test_defaults_render_only_the_core_objects() -> None:
    """Off by default: ingress, HPA, monitoring, dashboard, network policy."""
    kinds = sorted(o["kind"] for o in render())
    expected = ["ConfigMap", "Deployment", "Pod", "PodDisruptionBudget", "Service"]
    assert kinds == [*expected, "ServiceAccount"]


def test_all_on_renders_every_feature() -> None:
    """The all-on values file turns every optional object on."""
    kinds = {o["kind"] for o in render(CI_VALUES["all-on"])}
    assert kinds >= {"Ingress", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"}
    assert kinds >= {"NetworkPolicy", "PodDisruptionBudget"}
    assert len(find(render(CI_VALUES["all-on"]), "ConfigMap")) == 3  # config, keys, dashboard


# --- what the relay depends on -----------------------------------------------------------


@variants
def test_ports_match_the_relay_defaults(values_file: Path | None) -> None:
    """Container, Service and relay.toml ports are the relay's own defaults."""
    defaults = Settings()
    objects = render(values_file)
    ports = {p["name"]: p["containerPort"] for p in relay_container(objects)["ports"]}
    assert ports == {"http": defaults.http_port, "metrics": defaults.metrics_port}
    toml = relay_toml(objects)
    assert (toml["http_port"], toml["metrics_port"]) == (defaults.http_port, defaults.metrics_port)
    service = only(objects, "Service")["spec"]
    assert {p["name"]: p["targetPort"] for p in service["ports"]} == {
        "http": "http",
        "metrics": "metrics",
    }
    assert {p["name"]: p["port"] for p in service["ports"]} == ports


@variants
def test_probes_use_healthz_and_readyz_on_the_http_port(values_file: Path | None) -> None:
    """Liveness is /healthz, readiness /readyz, both on the port named http."""
    container = relay_container(render(values_file))
    scheme = "HTTPS" if values_file == CI_VALUES["all-on"] else "HTTP"
    expected = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        if probe == "startupProbe" and probe not in container:
            continue
        assert container[probe]["httpGet"] == {"path": path, "port": "http", "scheme": scheme}
    assert "lifecycle" not in container  # the relay drains itself on SIGTERM


def test_startup_probe_is_off_by_default() -> None:
    """The relay listens at once, so no startup probe unless asked for."""
    assert "startupProbe" not in relay_container(render())
    assert "startupProbe" in relay_container(render(CI_VALUES["all-on"]))


@variants
def test_security_context_is_hardened(values_file: Path | None) -> None:
    """Non-root 10001, RuntimeDefault seccomp, read-only root, no capabilities, no token."""
    objects = render(values_file)
    for pod_spec, container in (
        (pod_template(objects)["spec"], relay_container(objects)),
        (helm_test_pod(objects)["spec"], helm_test_pod(objects)["spec"]["containers"][0]),
    ):
        pod = pod_spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (10001, 10001, 10001)
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod_spec["automountServiceAccountToken"] is False
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["privileged"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
    account = only(objects, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    # No RELAY_PORT=tcp://... from a Service named relay (the relay accepts those anyway).
    assert pod_template(objects)["spec"]["enableServiceLinks"] is False
    assert pod_template(objects)["spec"]["serviceAccountName"] == account["metadata"]["name"]


@variants
def test_grace_period_outlasts_the_relay_shutdown(values_file: Path | None) -> None:
    """The pod's grace period is over shutdown_grace_s, itself over drain_delay_s."""
    objects = render(values_file)
    toml = relay_toml(objects)
    grace = pod_template(objects)["spec"]["terminationGracePeriodSeconds"]
    assert grace > toml["shutdown_grace_s"] > toml["drain_delay_s"]


def test_chart_defaults_keep_the_relay_defaults() -> None:
    """values.yaml's config only restates the relay's defaults, but for the broker address."""
    assert relay_toml(render())["drain_delay_s"] == Settings().drain_delay_s == 5
    assert relay_toml(render())["shutdown_grace_s"] == Settings().shutdown_grace_s == 25


@variants
def test_rendered_config_is_what_the_relay_loads(
    values_file: Path | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lay the projected volume out on disk; the relay's own loader accepts it all."""
    objects = render(values_file)
    container = relay_container(objects)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert (mount["mountPath"], mount["readOnly"]) == (CONFIG_DIR, True)
    (volume,) = [v for v in pod_template(objects)["spec"]["volumes"] if v["name"] == "config"]
    configmaps = {o["metadata"]["name"]: o["data"] for o in find(objects, "ConfigMap")}
    written: list[str] = []
    for source in volume["projected"]["sources"]:
        ((kind, ref),) = source.items()
        for item in ref["items"]:
            if kind == "configMap":
                content = configmaps[ref["name"]][item["key"]]
            elif item["path"].startswith("workflows/"):  # a token: no space in it
                content = f"from:{ref['name']}/{item['key']}\n"
            else:  # an existing Secret: its content is not the chart's business
                content = f"from {ref['name']}/{item['key']}\n"
            path = tmp_path / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content.replace(CONFIG_DIR, str(tmp_path)), encoding="utf-8")
            written.append(item["path"])
    assert len(written) == len(set(written))
    environ = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert environ["RELAY_CONFIG_FILE"] == f"{CONFIG_DIR}/relay.toml"
    environ["RELAY_CONFIG_FILE"] = str(tmp_path / "relay.toml")
    monkeypatch.chdir(ROOT)  # the image's WORKDIR holds config/routes.toml
    settings = Settings.load(environ)
    load_keys(settings)
    load_routing(settings)
    if values_file is None:
        placeholder = dataclasses.replace(
            Settings(), kafka_bootstrap_servers=("kafka-bootstrap:9092",)
        )
        assert settings == placeholder
    if values_file == CI_VALUES["workflows"]:
        sources = {source.name: source for source in settings.workflows}
        assert sorted(sources) == ["forms", "leads", "shop"]
        assert sources["leads"].tokens.accepts(b"from:hoopai-workflow-leads/token-2026-11")
        assert len(sources["leads"].tokens) == 2
        shop = sources["shop"]
        assert (shop.token_header, shop.topic, shop.key) == (
            "X-Hook-Token",
            "crm.shop-events",
            ("customData", "shop_id"),
        )
        assert shop.idempotency_field == ("customData", "order_id")
        forms = sources["forms"]
        assert (forms.token_query, forms.key, forms.idempotency) == ("token", (), "digest")
    if values_file == CI_VALUES["all-on"]:
        assert settings.kafka_sasl_password == "from hoopai-relay-kafka-user/password"
        assert len(settings.public_keys) == 2
        assert settings.tls_cert_file == tmp_path / "tls" / "tls.crt"


def test_config_schema_covers_every_relay_setting() -> None:
    """The config value accepts the relay's settings, less the chart's own and the secret."""
    accepted = set(values_schema()["properties"]["config"]["properties"])
    settings = {f.name for f in dataclasses.fields(Settings)}
    assert accepted == settings - CHART_OWNED - SECRET_SETTINGS
    assert settings >= CHART_OWNED


def _checksum(values: dict[str, Any]) -> str:
    """The checksum/config annotation for some overrides."""
    return str(annotations_of(pod_template(render(values=values)))["checksum/config"])


def test_config_checksum_rolls_the_pods() -> None:
    """A change of config, keys or routes changes checksum/config; a replica count does not."""
    base = _checksum({})
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert _checksum({"config": {"log_level": "DEBUG"}}) != base
    assert _checksum({"publicKeys": {"next.pem": PEM}}) != base
    assert _checksum({"routes": '[families]\nContact = "contacts"\n'}) != base
    assert _checksum({"replicaCount": 5}) == base


@variants
def test_secrets_are_never_inlined(values_file: Path | None) -> None:
    """No Secret object, no password in env or relay.toml; a password comes from a mount."""
    objects = render(values_file)
    assert not find(objects, "Secret")
    for env in relay_container(objects)["env"]:
        assert not ("PASSWORD" in env["name"] or "SECRET" in env["name"]) or "valueFrom" in env
    toml = relay_toml(objects)
    assert not set(toml) & SECRET_SETTINGS
    kafka = _values_of(values_file).get("kafka", {})
    for setting, section in (
        ("kafka_sasl_password_file", "sasl"),
        ("kafka_oauth_client_secret_file", "oauth"),
        ("kafka_ssl_keyfile", "tls"),
    ):
        if setting in toml:
            assert _secret_behind(objects, toml[setting]) == kafka[section]["existingSecret"]
    # No ConfigMap holds anything secret: no private key, no token, no secret setting.
    for configmap in find(objects, "ConfigMap"):
        text = json.dumps(configmap["data"])
        assert "PRIVATE KEY" not in text
        assert "eyJ" not in text  # the start of every JWT
        for name in SECRET_SETTINGS:
            assert f"{name} =" not in text


def _values_of(values_file: Path | None) -> dict[str, Any]:
    """The values a variant sets (the chart's defaults for None)."""
    path = values_file or CHART / "values.yaml"
    values: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return values


def _secret_behind(objects: list[Obj], path: str) -> str:
    """The name of the Secret that the projected config volume mounts at ``path``."""
    volumes = pod_template(objects)["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == "config"]
    sources = [s["secret"] for s in volume["projected"]["sources"] if "secret" in s]
    relative = path.removeprefix(f"{CONFIG_DIR}/")
    (owner,) = [s for s in sources if relative in {i["path"] for i in s["items"]}]
    return str(owner["name"])


@pytest.mark.parametrize(
    ("variant", "protocol", "mechanism", "files"),
    [
        ("kafka-ssl", "SSL", None, {"kafka_ssl_cafile"}),
        ("kafka-mtls", "SSL", None,
         {"kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"}),
        ("kafka-sasl-plain", "SASL_SSL", "PLAIN", {"kafka_sasl_password_file"}),
        ("kafka-sasl-scram", "SASL_SSL", "SCRAM-SHA-512",
         {"kafka_ssl_cafile", "kafka_sasl_password_file"}),
        ("kafka-oauth", "SASL_SSL", "OAUTHBEARER",
         {"kafka_ssl_cafile", "kafka_oauth_client_secret_file"}),
    ],
)  # fmt: skip
def test_each_kafka_mode_mounts_its_files_from_secrets(
    variant: str, protocol: str, mechanism: str | None, files: set[str]
) -> None:
    """Each ci/ Kafka mode: its protocol and mechanism, and exactly its files, from Secrets."""
    objects = render(CI_VALUES[variant])
    toml = relay_toml(objects)
    assert toml["kafka_security_protocol"] == protocol
    if mechanism is not None:  # SSL alone uses no SASL mechanism, whatever the default says
        assert toml["kafka_sasl_mechanism"] == mechanism
    mounted = {k for k in toml if k.startswith("kafka_") and k.endswith("file")}
    assert mounted == files
    assert toml["kafka_ssl_check_hostname"] is True
    for setting in files:
        assert _secret_behind(objects, toml[setting])  # every one is in a Secret


def test_public_keys_are_mounted_from_a_configmap() -> None:
    """Each of publicKeys becomes a file under keys/, listed in public_keys."""
    objects = render(values={"publicKeys": {"b.pem": PEM, "a.pem": PEM}})
    assert relay_toml(objects)["public_keys"] == [
        f"{CONFIG_DIR}/keys/a.pem",
        f"{CONFIG_DIR}/keys/b.pem",
    ]
    keys = next(o for o in find(objects, "ConfigMap") if o["metadata"]["name"].endswith("-keys"))
    assert keys["data"]["a.pem"].strip() == PEM.strip()
    assert "public_keys" not in relay_toml(render())


def test_ingress_exposes_only_the_webhook_path() -> None:
    """The Ingress routes the webhook path, and each workflow source's, exactly, to http."""
    ingress = only(render(CI_VALUES["all-on"]), "Ingress")["spec"]
    (rule,) = ingress["rules"]
    paths = rule["http"]["paths"]
    assert [(p["path"], p["pathType"]) for p in paths] == [
        (WEBHOOK_PATH, "Exact"),
        (WORKFLOW_PATH.format(name="leads"), "Exact"),
    ]
    for path in paths:
        assert path["backend"]["service"]["port"] == {"name": "http"}
    assert ingress["tls"][0]["hosts"] == [rule["host"]]
    # Without workflow sources, the webhook path alone, as before they existed.
    plain = only(
        render(values={"ingress": {"enabled": True, "hosts": ["h.example.com"]}}), "Ingress"
    )
    ((only_path,),) = [r["http"]["paths"] for r in plain["spec"]["rules"]]
    assert only_path["path"] == WEBHOOK_PATH


def test_workflow_tokens_are_mounted_from_their_secrets() -> None:
    """Each token key of each source is a file of the projected volume, from its Secret."""
    objects = render(CI_VALUES["workflows"])
    (volume,) = [v for v in pod_template(objects)["spec"]["volumes"] if v["name"] == "config"]
    secrets = {
        s["secret"]["name"]: [(i["key"], i["path"]) for i in s["secret"]["items"]]
        for s in volume["projected"]["sources"]
        if "secret" in s
    }
    assert secrets == {
        "hoopai-workflow-forms": [("token", "workflows/forms/token")],
        "hoopai-workflow-leads": [
            ("token-2026-08", "workflows/leads/token-2026-08"),
            ("token-2026-11", "workflows/leads/token-2026-11"),
        ],
        "hoopai-workflow-shop": [("token", "workflows/shop/token")],
    }
    toml = relay_toml(objects)
    assert toml["workflows"]["leads"] == {
        "token_files": [
            f"{CONFIG_DIR}/workflows/leads/token-2026-08",
            f"{CONFIG_DIR}/workflows/leads/token-2026-11",
        ]
    }
    assert "workflows" not in relay_toml(render())
    assert not find(objects, "Secret")


@pytest.mark.parametrize(
    ("workflow", "message"),
    [
        ({"tokenKeys": ["t"]}, "missing property 'existingSecret'"),
        ({"existingSecret": "s", "tokenKeys": []}, "minItems"),
        ({"existingSecret": "s", "tokenKeys": ["t"], "token": "x"}, "additional properties"),
        (
            {"existingSecret": "s", "tokenKeys": ["t"], "tokenHeader": "X-A", "tokenQuery": "a"},
            "tokenHeader and tokenQuery: set one of them",
        ),
        (
            {"existingSecret": "s", "tokenKeys": ["t"], "idempotency": "field"},
            "idempotency field needs idempotencyField",
        ),
    ],
)
def test_workflow_values_are_checked(workflow: dict[str, Any], message: str) -> None:
    """A source without its Secret, with an inlined token, or half set: refused by name."""
    result = template(values={"workflows": {"leads": workflow}})
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_service_monitor_scrapes_the_metrics_port() -> None:
    """The ServiceMonitor picks the Service by its labels and scrapes /metrics on metrics."""
    objects = render(CI_VALUES["all-on"])
    monitor = only(objects, "ServiceMonitor")["spec"]
    (endpoint,) = monitor["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["scheme"]) == (
        "metrics",
        "/metrics",
        "http",
    )
    service_labels = only(objects, "Service")["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= service_labels.items()


def test_pod_disruption_budget() -> None:
    """By default minAvailable 1; maxUnavailable instead when asked; never both."""
    default = only(render(), "PodDisruptionBudget")["spec"]
    assert default["minAvailable"] == 1
    assert "maxUnavailable" not in default
    other = only(render(CI_VALUES["kafka-ssl"]), "PodDisruptionBudget")["spec"]
    assert other["maxUnavailable"] == 1
    assert "minAvailable" not in other


def test_topology_spread_uses_the_selector_labels() -> None:
    """Pods spread by zone and host, softly, matched by the Deployment's selector."""
    objects = render()
    selector = only(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    constraints = pod_template(objects)["spec"]["topologySpreadConstraints"]
    keys = [c["topologyKey"] for c in constraints]
    assert keys == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    for constraint in constraints:
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["labelSelector"] == {"matchLabels": selector}


def test_network_policy() -> None:
    """Webhooks from anywhere, metrics from the scrapers, Kafka and DNS out."""
    policy = only(render(CI_VALUES["all-on"]), "NetworkPolicy")["spec"]
    webhooks, metrics = policy["ingress"]
    assert webhooks == {"ports": [{"port": "http", "protocol": "TCP"}]}
    assert metrics["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert set(metrics["from"][0]) == {"namespaceSelector", "podSelector"}
    kafka, dns = policy["egress"]
    assert kafka["ports"] == [{"port": 9092, "endPort": 9094, "protocol": "TCP"}]
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]


def test_network_policy_lets_the_helm_test_pod_in() -> None:
    """With the webhook port restricted, the `helm test` pod may still reach it."""
    objects = render(CI_VALUES["kafka-ssl"])
    webhooks = only(objects, "NetworkPolicy")["spec"]["ingress"][0]
    pod_labels = helm_test_pod(objects)["metadata"]["labels"]
    selectors = [p["podSelector"]["matchLabels"] for p in webhooks["from"] if "podSelector" in p]
    assert any(s.items() <= pod_labels.items() for s in selectors)


def test_helm_test_pod_checks_readyz_through_the_service() -> None:
    """The test pod GETs /readyz on the Service, and is not picked by the Service itself."""
    objects = render()
    pod = helm_test_pod(objects)
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    assert re.fullmatch(r"busybox:[0-9.]+", container["image"])  # pinned
    service = only(objects, "Service")
    name = service["metadata"]["name"]
    assert container["command"][-1] == f"http://{name}.{NAMESPACE}.svc:8080/readyz"
    assert not service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    tls_pod = helm_test_pod(render(CI_VALUES["all-on"]))
    assert tls_pod["spec"]["containers"][0]["command"][-1].startswith("https://")


def test_notes_give_the_webhook_url(tmp_path: Path) -> None:
    """NOTES.txt names the public webhook URL and how to check readiness and metrics."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text(encoding="utf-8")
    (chart / "templates" / "NOTES.txt").unlink()
    # helm template does not print NOTES.txt: render its text as a value of a document
    (chart / "templates" / "_notes.tpl").write_text(
        '{{- define "notes-under-test" -}}\n' + notes + "{{- end }}\n", encoding="utf-8"
    )
    (chart / "templates" / "notes.yaml").write_text(
        'notes: |\n  {{- include "notes-under-test" . | nindent 2 }}\n', encoding="utf-8"
    )
    result = template(CI_VALUES["all-on"], chart=chart, show_only="templates/notes.yaml")
    assert result.returncode == 0, result.stderr
    text = yaml.safe_load(result.stdout)["notes"]
    assert f"https://hooks.example.com{WEBHOOK_PATH}" in text
    assert "/readyz" in text
    assert "/metrics" in text


# --- refusing half-set values --------------------------------------------------------------

SASL = {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "relay"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"terminationGracePeriodSeconds": 25},
            "terminationGracePeriodSeconds (25) must be greater than config.shutdown_grace_s (25)",
        ),
        (
            {"config": {"drain_delay_s": 5, "shutdown_grace_s": 5}},
            "config.shutdown_grace_s (5) must be greater than config.drain_delay_s (5)",
        ),
        ({"podDisruptionBudget": {"maxUnavailable": 1}}, "not both"),
        ({"podDisruptionBudget": {"minAvailable": ""}}, "neither minAvailable nor maxUnavailable"),
        (
            {"config": SASL, "kafka": {"sasl": {"existingSecret": "s", "passwordKey": ""}}},
            "kafka.sasl.passwordKey is empty",
        ),
        (
            {"kafka": {"sasl": {"existingSecret": "s"}}},
            "config.kafka_security_protocol is PLAINTEXT",
        ),
        ({"config": SASL}, "no password: set kafka.sasl.existingSecret"),
        (
            {
                "config": {"kafka_security_protocol": "SASL_PLAINTEXT"},
                "kafka": {"sasl": {"existingSecret": "s"}},
            },
            "config.kafka_sasl_username is empty",
        ),
        (
            {
                "config": {"kafka_security_protocol": "SSL"},
                "kafka": {"tls": {"existingSecret": "s", "certKey": "tls.crt"}},
            },
            "kafka.tls.certKey and kafka.tls.keyKey go together",
        ),
        (
            {"kafka": {"tls": {"certKey": "tls.crt", "keyKey": "tls.key"}}},
            "kafka.tls.existingSecret is empty",
        ),
        ({"kafka": {"tls": {"existingSecret": "s"}}}, "use SSL or SASL_SSL"),
        (
            {"config": {**SASL, "kafka_sasl_mechanism": "OAUTHBEARER"}},
            "kafka_oauth_token_endpoint or config.kafka_oauth_client_id is empty",
        ),
        (
            {
                "config": {
                    **SASL,
                    "kafka_sasl_mechanism": "OAUTHBEARER",
                    "kafka_oauth_token_endpoint": "https://idp.example/token",
                    "kafka_oauth_client_id": "relay",
                }
            },
            "no client secret: set kafka.oauth.existingSecret",
        ),
        (
            {
                "config": SASL,
                "kafka": {"sasl": {"existingSecret": "s"}, "oauth": {"existingSecret": "o"}},
            },
            "kafka.oauth.existingSecret is set but the SASL mechanism is PLAIN",
        ),
        ({"tls": {"enabled": True}}, "tls.existingSecret is empty"),
        ({"tls": {"existingSecret": "s"}}, "tls.enabled is false"),
        ({"ingress": {"enabled": True}}, "ingress.hosts is empty"),
        (
            {"ingress": {"enabled": True, "hosts": ["a.example"], "tls": [{"secretName": "t"}]}},
            "ingress.tls[0] has no hosts",
        ),
        (
            {
                "ingress": {
                    "enabled": True,
                    "hosts": ["a.example"],
                    "tls": [{"secretName": "t", "hosts": ["b.example"]}],
                }
            },
            "ingress.tls[0].hosts: b.example is not in ingress.hosts",
        ),
        (
            {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
            "autoscaling.minReplicas (5) is greater than autoscaling.maxReplicas (2)",
        ),
        (
            {
                "networkPolicy": {
                    "enabled": True,
                    "metrics": {"namespaceSelector": None, "podSelector": None},
                }
            },
            "networkPolicy.metrics needs a namespaceSelector or a podSelector",
        ),
    ],
)
def test_half_set_values_fail(values: dict[str, Any], message: str) -> None:
    """A half-set value stops the render with a message naming what to set."""
    result = template(values=values)
    assert result.returncode != 0
    assert "execution error" in result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"replicaCont": 3}, "at '': additional properties 'replicaCont' not allowed"),
        ({"ingress": {"enabeld": True}}, "at '/ingress': additional properties 'enabeld'"),
        ({"config": {"drain_delay": 3}}, "at '/config': additional properties 'drain_delay'"),
        ({"config": {"http_port": 8081}}, "at '/config': additional properties 'http_port'"),
        ({"config": {"kafka_sasl_password": "x"}}, "additional properties 'kafka_sasl_password'"),
        (
            {"config": {"kafka_oauth_client_secret": "x"}},
            "additional properties 'kafka_oauth_client_secret'",
        ),
        ({"config": {"kafka_sasl_mechanism": "GSSAPI"}}, "at '/config/kafka_sasl_mechanism'"),
        ({"config": {"log_level": "VERBOSE"}}, "at '/config/log_level'"),
        ({"config": {"max_in_flight": 1.5}}, "at '/config/max_in_flight'"),
        ({"publicKeys": {"k.pem": "not a key"}}, "at '/publicKeys/k.pem'"),
    ],
)
def test_schema_rejects_typos_and_bad_values(values: dict[str, Any], where: str) -> None:
    """values.schema.json refuses unknown keys and bad values before anything renders."""
    result = template(values=values)
    assert result.returncode != 0
    assert "don't meet the specifications of the schema" in result.stderr
    assert where in result.stderr


# --- monitoring against a real relay --------------------------------------------------------


@pytest.fixture(scope="module")
def monitoring_queries() -> list[str]:
    """Every PromQL expression of the PrometheusRule and the dashboard (all-on values)."""
    objects = render(CI_VALUES["all-on"])
    rule = only(objects, "PrometheusRule")
    queries = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    configmap = next(o for o in find(objects, "ConfigMap") if "hoopai-relay.json" in o["data"])
    dashboard = json.loads(configmap["data"]["hoopai-relay.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "hoopai-relay.json").read_text())
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    queries += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    variables = dashboard["templating"]["list"]
    queries += [v["query"]["query"] for v in variables if v["type"] == "query"]
    return queries


def _uses(queries: list[str]) -> Iterator[tuple[str, str, list[tuple[str, str, str]], set[str]]]:
    """For each relay metric in each query: query, name, its matchers, the query's groupings."""
    for query in queries:
        grouping = {g.strip() for m in GROUPING.finditer(query) for g in m[1].split(",")} - {""}
        grouping |= set(re.findall(r"label_values\([^,]+,\s*(\w+)\)", query))
        for match in METRIC.finditer(query):
            yield query, match[1], MATCHER.findall(match[2] or ""), grouping


async def test_monitoring_uses_only_what_the_relay_exports(
    http: aiohttp.ClientSession,
    start_relay: StartRelay,
    ed25519_key: Ed25519PrivateKey,
    monitoring_queries: list[str],
    tmp_path: Path,
) -> None:
    """Every relay_* name and label in the alerts and the dashboard is in a real scrape."""
    # A spool with a torn write, as a crash leaves it: the relay cuts it at start-up and
    # counts it, so relay_spool_corrupt_total{kind} has a sample to check against.
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / segment_name(1)).write_bytes(MAGIC + b"\x00\x00")
    # Quarantine on: the stranger's 401 below is written, relay_quarantine_writes_total{result}.
    relay = await start_relay(max_body_bytes=4 * 1024 * 1024, spool_dir=spool_dir, quarantine=True)
    accepted = as_delivery({"type": "ContactCreate", "locationId": "loc-mon"})
    too_big = as_delivery({"type": "NoteCreate", "locationId": "loc-mon", "body": "n" * 2_000_000})
    stranger = Ed25519PrivateKey.generate()
    # 200, then 429 produce_failed (over the broker's message.max.bytes), then 401s.
    for body, key, status in (
        (accepted, ed25519_key, 200),
        (too_big, ed25519_key, 429),
        (accepted, stranger, 401),
    ):
        headers = {"X-GHL-Signature": sign_ed25519(key, body)}
        # BytesIO: aiohttp warns about a large raw bytes body; the bytes sent are the same.
        data = io.BytesIO(body)
        async with http.post(relay.webhook_url, data=data, headers=headers) as response:
            assert response.status == status
    async with http.post(relay.webhook_url, data=b"{}") as response:
        assert response.status == 401
    written = 'relay_quarantine_writes_total{result="written"}'
    async with asyncio.timeout(30):
        while written not in (text := await scrape(http, relay)):
            await asyncio.sleep(0.2)

    families: set[str] = set()
    labels: dict[str, set[str]] = {}  # sample name -> its label names
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    used: set[str] = set()
    for query, name, matchers, grouping in _uses(monitoring_queries):
        used.add(name)
        base = re.sub(r"_(bucket|sum|count|total)$", "", name)
        assert base in families or name in families, f"{name} in {query!r}"
        assert name in labels, f"{name}: no such sample in the scrape ({query!r})"
        for label, op, value in matchers:
            if label in TARGET_LABELS:
                continue
            assert label in labels[name], f"{name} has no label {label} ({query!r})"
            if label in LABEL_VALUES and op in ("=", "=~"):
                assert set(value.split("|")) <= LABEL_VALUES[label], f"{label}={value!r}"
        names_here = {m[1] for m in METRIC.finditer(query)}
        known = set().union(*(labels.get(n, set()) for n in names_here)) | TARGET_LABELS
        assert grouping <= known, f"grouping by {grouping - known} in {query!r}"
    assert used >= {
        "relay_requests_total",
        "relay_unauthenticated_requests_total",
        "relay_unavailable_requests_total",
        "relay_kafka_producer_errors_total",
        "relay_request_duration_seconds_bucket",
        "relay_kafka_produce_duration_seconds_bucket",
        "relay_in_flight_requests",
        "relay_build_info",
        "relay_kafka_reachable",
        "relay_spool_bytes",
        "relay_spool_records",
        "relay_spool_oldest_record_age_seconds",
        "relay_spool_appends_total",
        "relay_spool_drained_total",
        "relay_spool_corrupt_total",
        "relay_quarantine_writes_total",
    }


# --- the spool ---------------------------------------------------------------------------------


def test_spool_is_off_by_default() -> None:
    """By default: a Deployment, no RELAY_SPOOL_DIR, no spool volume."""
    objects = render()
    assert workload(objects)["kind"] == "Deployment"
    assert "RELAY_SPOOL_DIR" not in {e["name"] for e in relay_container(objects)["env"]}
    assert "spool" not in {v["name"] for v in pod_template(objects)["spec"]["volumes"]}


def test_spool_in_an_empty_dir() -> None:
    """spool.enabled alone: still a Deployment, the spool in an emptyDir with a size limit."""
    objects = render(values={"spool": {"enabled": True}})
    assert workload(objects)["kind"] == "Deployment"
    env = {e["name"]: e.get("value") for e in relay_container(objects)["env"]}
    assert env["RELAY_SPOOL_DIR"] == "/var/spool/hoopai-relay"
    (mount,) = [m for m in relay_container(objects)["volumeMounts"] if m["name"] == "spool"]
    assert mount["mountPath"] == env["RELAY_SPOOL_DIR"]
    (volume,) = [v for v in pod_template(objects)["spec"]["volumes"] if v["name"] == "spool"]
    assert volume["emptyDir"] == {"sizeLimit": "2Gi"}


def test_persistence_makes_a_statefulset_with_a_claim_per_pod() -> None:
    """persistence.enabled: a StatefulSet, a spool claim template, the HPA scaling it."""
    objects = render(CI_VALUES["spool"])
    assert not find(objects, "Deployment")
    statefulset = only(objects, "StatefulSet")
    spec = statefulset["spec"]
    assert spec["serviceName"] == only(objects, "Service")["metadata"]["name"]
    assert "strategy" not in spec
    assert spec["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "spool"
    assert claim["spec"]["resources"]["requests"]["storage"] == "3Gi"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "spool" not in {v["name"] for v in pod_template(objects)["spec"]["volumes"]}
    env = {e["name"]: e.get("value") for e in relay_container(objects)["env"]}
    (mount,) = [m for m in relay_container(objects)["volumeMounts"] if m["name"] == "spool"]
    assert mount["mountPath"] == env["RELAY_SPOOL_DIR"]
    target = only(objects, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", statefulset["metadata"]["name"])
    assert relay_toml(objects)["spool_max_bytes"] == 2147483648


# --- the alerts and the dashboard, by values ------------------------------------------------------

RULES_ON = {"prometheusRule": {"enabled": True, "kubeStateMetrics": True}}


def alerts(objects: list[Obj]) -> dict[str, Obj]:
    """The PrometheusRule's alerts, by name."""
    (group,) = only(objects, "PrometheusRule")["spec"]["groups"]
    return {rule["alert"]: rule for rule in group["rules"]}


def with_rules(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the PrometheusRule (and its kube-state-metrics alert) on."""
    rule = {**RULES_ON["prometheusRule"], **values.get("prometheusRule", {})}
    return {**values, "prometheusRule": rule}


def threshold(rule: Obj) -> float:
    """The number an alert's expression compares against (its last ``> N`` or ``< N``)."""
    found = re.findall(r"[<>]\s*([0-9.e+]+)\s*$", rule["expr"].strip())
    assert found, rule["expr"]
    return float(found[-1])


def test_no_ready_pod_alert_follows_the_workload_kind() -> None:
    """kube_deployment_* for the Deployment, kube_statefulset_* for the StatefulSet."""
    for values_file, values, series, label in (
        (None, RULES_ON, "kube_deployment_status_replicas_available", "deployment"),
        (CI_VALUES["spool"], None, "kube_statefulset_status_replicas_ready", "statefulset"),
        (None, with_rules({"persistence": {"enabled": True}}), "kube_statefulset_", "statefulset"),
    ):
        objects = render(values_file, values)
        expr = alerts(objects)["HoopaiRelayNoReadyPod"]["expr"]
        name = workload(objects)["metadata"]["name"]
        assert expr.strip().startswith(series), expr
        assert f'{label}="{name}"' in expr
        assert f'namespace="{NAMESPACE}"' in expr
        assert threshold(alerts(objects)["HoopaiRelayNoReadyPod"]) == 1
    assert workload(render(CI_VALUES["spool"]))["kind"] == "StatefulSet"
    no_ksm = with_rules({"prometheusRule": {"kubeStateMetrics": False}})
    assert "HoopaiRelayNoReadyPod" not in alerts(render(values=no_ksm))


@pytest.mark.parametrize(
    ("values", "spool_on"),
    [
        ({}, False),
        ({"spool": {"enabled": True}}, True),
        ({"persistence": {"enabled": True}}, True),
    ],
    ids=["spool-off", "emptydir", "persistence"],
)
def test_spool_alerts_only_with_the_spool_on(values: dict[str, Any], spool_on: bool) -> None:
    """The spool's three alerts exist exactly when the spool does."""
    objects = render(values=with_rules(values))
    check_prometheus_rule(only(objects, "PrometheusRule"))
    assert set(alerts(objects)) & SPOOL_ALERTS == (SPOOL_ALERTS if spool_on else set())
    env = {e["name"] for e in relay_container(objects)["env"]}
    assert ("RELAY_SPOOL_DIR" in env) is spool_on


def test_spool_alerts_default_thresholds() -> None:
    """10 minutes past 600 s of age; 80 % of the relay's default 1 GiB cap; 1 h of damage."""
    rules = alerts(render(values=with_rules({"spool": {"enabled": True}})))
    not_draining = rules["HoopaiRelaySpoolNotDraining"]
    assert "relay_spool_oldest_record_age_seconds{" in not_draining["expr"]
    assert (threshold(not_draining), not_draining["for"]) == (600, "10m")
    near_full = rules["HoopaiRelaySpoolNearFull"]
    assert "sum by (namespace, pod) (relay_spool_bytes{" in near_full["expr"]
    assert threshold(near_full) == int(0.8 * Settings().spool_max_bytes)
    damaged = rules["HoopaiRelaySpoolDamaged"]["expr"]
    assert "increase(relay_spool_corrupt_total{" in damaged
    assert "[1h]" in damaged
    assert "offset 1h" in damaged
    # counted at start-up, before any scrape: a series born at 1 shows by its value
    assert "unless relay_spool_corrupt_total{" in damaged
    assert damaged.count(") > 0)") == 2


def test_spool_alert_thresholds_come_from_values() -> None:
    """The thresholds, the window and the cap (config.spool_max_bytes) are the values'."""
    values = {
        "persistence": {"enabled": True},
        "config": {"spool_max_bytes": 3_000_000_000, "workers": 4},
        "prometheusRule": {
            "spool": {"oldestRecordAgeSeconds": 900, "bytesRatio": 0.5, "corruptWindow": "6h"}
        },
    }
    rules = alerts(render(values=with_rules(values)))
    assert threshold(rules["HoopaiRelaySpoolNotDraining"]) == 900
    # the pod's whole cap, not a worker's share: relay_spool_bytes adds the workers up
    assert threshold(rules["HoopaiRelaySpoolNearFull"]) == 1_500_000_000
    assert "3000000000" in rules["HoopaiRelaySpoolNearFull"]["annotations"]["summary"]
    damaged = rules["HoopaiRelaySpoolDamaged"]["expr"]
    assert "[6h]" in damaged
    assert "offset 6h" in damaged
    all_on = alerts(render(CI_VALUES["all-on"]))
    assert threshold(all_on["HoopaiRelaySpoolNotDraining"]) == 300
    assert threshold(all_on["HoopaiRelaySpoolNearFull"]) == int(0.7 * Settings().spool_max_bytes)
    spool_ci = alerts(render(CI_VALUES["spool"]))
    assert threshold(spool_ci["HoopaiRelaySpoolNearFull"]) == int(0.8 * 2147483648)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        (
            {"prometheusRule": {"spool": {"bytesRatio": 1.5}}},
            "at '/prometheusRule/spool/bytesRatio'",
        ),
        ({"prometheusRule": {"spool": {"corruptWindow": "1 hour"}}}, "corruptWindow"),
        ({"prometheusRule": {"spool": {"oldestAge": 60}}}, "additional properties 'oldestAge'"),
    ],
)
def test_schema_checks_the_spool_alert_values(values: dict[str, Any], where: str) -> None:
    """values.schema.json refuses a bad spool threshold before anything renders."""
    result = template(values=values)
    assert result.returncode != 0
    assert where in result.stderr


def test_in_flight_alert_counts_every_worker() -> None:
    """relay_in_flight_requests adds a pod's workers up, each with max_in_flight of its own."""
    one = alerts(render(values=with_rules({})))["HoopaiRelayInFlightNearLimit"]
    assert threshold(one) == 0.8 * Settings().max_in_flight
    values = with_rules({"config": {"workers": 3, "max_in_flight": 500}})
    three = alerts(render(values=values))["HoopaiRelayInFlightNearLimit"]
    assert threshold(three) == 0.8 * 500 * 3


def test_dashboard_has_the_spool_panels_and_no_overlap() -> None:
    """A panel for each spool metric; no two panels share a cell of the grid."""
    dashboard = json.loads((CHART / "dashboards" / "hoopai-relay.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for name in (
        "relay_spool_bytes",
        "relay_spool_records",
        "relay_spool_oldest_record_age_seconds",
        "relay_spool_appends_total",
        "relay_spool_drained_total",
        "relay_spool_corrupt_total",
    ):
        assert f"{name}{{" in exprs, name
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, panel["title"]
        cells |= mine


def test_spool_drain_job_mounts_the_named_claim() -> None:
    """spoolDrain: a Job runs `relay spool drain` on the claim named, with the relay's config.

    Its pod carries none of the Service's selector labels, and without a claim the render
    stops naming the value to set.
    """
    drain = {"spoolDrain": {"enabled": True, "claim": "spool-r-hoopai-relay-2"}}
    objects = render(CI_VALUES["spool"], drain)
    job = only(objects, "Job")
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert container["command"][:4] == ["relay", "spool", "drain", mount["spool"]]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["spool"]["persistentVolumeClaim"]["claimName"] == "spool-r-hoopai-relay-2"
    assert (
        volumes["config"]
        == {v["name"]: v for v in pod_template(objects)["spec"]["volumes"]}["config"]
    )
    selector = only(objects, "Service")["spec"]["selector"]
    assert not selector.items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["restartPolicy"] == "Never"
    assert not find(render(CI_VALUES["spool"]), "Job")
    result = template(values={"spoolDrain": {"enabled": True}})
    assert result.returncode != 0
    assert "spoolDrain.claim" in result.stderr
