"""The chart's alerts and dashboard against the real Prometheus and promtool.

Both come from Debian's ``prometheus`` package, which ``make prometheus`` unpacks into
``~/.cache/hoopai-relay`` and exports as ``$PROMETHEUS`` and ``$PROMTOOL`` (else they are
looked up on PATH). The rules are always the chart's, rendered by Helm for the test.

- ``promtool test rules`` runs tests/prometheus/*.test.yaml against the rendered rules:
  every alert fires in one case and stays silent in another.
- A real Prometheus on 127.0.0.1 scrapes three real ``relay serve``: one process, two workers
  with the spool, one process with the spool. It loads the chart's rules, rendered with
  short ``for`` durations (``prometheusRule.for``) and thresholds. The test stops the broker
  of its own (the ``alerts`` cluster) and watches ``/api/v1/alerts``.
- Every query of every dashboard panel runs against that Prometheus after real traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import localkafka
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.spool.frames import MAGIC, segment_name
from relay.tools.deliveries import as_delivery, sign_ed25519
from tests import relayproc
from tests.helmutil import CHART, NAMESPACE, RELEASE, find, only, render
from tests.kafkautil import unique_topic
from tests.relayutil import free_port, serve_env

#: promtool's test files: input series and the alerts expected of the rendered rules.yaml
RULE_TESTS = sorted((Path(__file__).parent / "prometheus").glob("*.test.yaml"))
#: the chart's default thresholds, with every alert rendered (spool, kube-state-metrics)
UNIT_VALUES = {
    "prometheusRule": {"enabled": True, "kubeStateMetrics": True},
    "spool": {"enabled": True},
}
JOB = f"{RELEASE}-hoopai-relay"  # what the ServiceMonitor's job label is for this release
SCRAPE_S = 2.0
EVALUATE_S = 0.5
#: the durations and thresholds of the live test: seconds, not the chart's minutes
FOR = {
    "HoopaiRelayKafkaUnreachable": "5s",
    "HoopaiRelaySpoolNotDraining": "3s",
    "HoopaiRelaySpoolNearFull": "3s",
    "HoopaiRelayAnsweringRetryable": "4s",
    "HoopaiRelayKafkaProduceErrors": "4s",
}
SPOOL_MAX_BYTES = 64 * 1024 * 1024
SPOOL_AGE_S = 1
LIVE_VALUES = {
    "prometheusRule": {
        "enabled": True,
        "for": FOR,
        "spool": {"oldestRecordAgeSeconds": SPOOL_AGE_S, "bytesRatio": 0.00002},
    },
    "spool": {"enabled": True},
    "config": {"spool_max_bytes": SPOOL_MAX_BYTES, "workers": 2},
}
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=15)


def tool(variable: str, name: str) -> str:
    """``$variable``, default ``name`` on PATH; fail the test without it."""
    found = shutil.which(os.environ.get(variable, name))
    if found is None:
        pytest.fail(f"{name} not found (${variable}): run `make prometheus`", pytrace=False)
    return found


def rule_groups(values: dict[str, Any] | None = None, values_file: Path | None = None) -> Any:
    """The rendered PrometheusRule's spec: a Prometheus rule file's contents."""
    return only(render(values_file, values), "PrometheusRule")["spec"]


def write_rules(folder: Path, spec: Any) -> Path:
    """The rule file Prometheus and promtool read."""
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool within 60 s."""
    return subprocess.run(
        [tool("PROMTOOL", "promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- promtool ----------------------------------------------------------------------------


def test_promtool_rule_tests_cover_every_alert(tmp_path: Path) -> None:
    """`promtool test rules` passes, with a firing and a silent case for every chart alert."""
    spec = rule_groups(UNIT_VALUES)
    names = {rule["alert"] for group in spec["groups"] for rule in group["rules"]}
    write_rules(tmp_path, spec)
    for path in RULE_TESTS:
        shutil.copy(path, tmp_path / path.name)
    result = promtool("test", "rules", *(str(tmp_path / p.name) for p in RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case["alert_rule_test"]:
                (firing if check["exp_alerts"] else silent).add(check["alertname"])
    assert names - firing == set(), "alerts with no firing case"
    assert names - silent == set(), "alerts with no silent case"
    assert firing | silent <= names, "cases for alerts the chart no longer has"


@pytest.mark.parametrize(
    ("values", "values_file"),
    [(UNIT_VALUES, None), (LIVE_VALUES, None), (None, CHART / "ci" / "all-on-values.yaml")],
    ids=["defaults", "short-for", "all-on"],
)
def test_promtool_checks_the_rendered_rules(
    tmp_path: Path, values: dict[str, Any] | None, values_file: Path | None
) -> None:
    """`promtool check rules` accepts the chart's rule file, as rendered."""
    path = write_rules(tmp_path, rule_groups(values, values_file))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# --- a real Prometheus scraping real relays -----------------------------------------------


@dataclass
class Relay:
    """One ``relay serve`` (perhaps a supervisor of workers) as a Prometheus target."""

    pod: str
    port: int
    metrics_port: int
    spool: bool
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def webhook_url(self) -> str:
        """Where HoopAI would POST."""
        return f"http://127.0.0.1:{self.port}/webhooks/hoopai"

    @property
    def target(self) -> str:
        """host:port of its /metrics."""
        return f"127.0.0.1:{self.metrics_port}"


@dataclass
class Stack:
    """The broker, the relays and the Prometheus scraping them."""

    cluster: localkafka.Cluster
    relays: list[Relay]
    prometheus: str
    started: float
    key: Ed25519PrivateKey
    log: Path
    sent: dict[str, int] = field(default_factory=dict)

    async def api(self, http: aiohttp.ClientSession, path: str, **params: str) -> Any:
        """GET one of Prometheus's /api/v1 endpoints; its ``data``, or fail with its error."""
        url = f"{self.prometheus}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        async with http.get(url) as response:
            body = await response.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    async def alerts(self, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
        """The alerts Prometheus holds now, pending and firing."""
        data = await self.api(http, "alerts")
        found: list[dict[str, Any]] = data["alerts"]
        return found

    async def value(self, http: aiohttp.ClientSession, query: str) -> dict[str, float]:
        """An instant query's result: pod -> value."""
        result = await self.api(http, "query", query=query)
        return {s["metric"].get("pod", ""): float(s["value"][1]) for s in result["result"]}


def start_relay(
    folder: Path, bootstrap: str, keys: tuple[Path, ...], pod: str, workers: int, spool: bool
) -> Relay:
    """``relay serve`` on fixed free ports (workers share theirs), its log in ``folder``."""
    port, metrics_port = free_port(), free_port()
    settings = {
        "RELAY_HTTP_PORT": str(port),
        "RELAY_METRICS_PORT": str(metrics_port),
        "RELAY_WORKERS": str(workers),
        "RELAY_READY_CHECK_INTERVAL_S": "0.25",
        "RELAY_ACK_TIMEOUT_MS": "2000",
        "RELAY_MAX_BODY_BYTES": str(4 * 1024 * 1024),
        "RELAY_DRAIN_DELAY_S": "0",
        # At start-up: a topic created by the first record could take longer than the ack.
        "RELAY_CREATE_TOPICS": "true",
        "RELAY_SHUTDOWN_GRACE_S": "5",
    }
    if spool:
        spool_dir = folder / f"spool-{pod}"
        # A torn last write, as a crash leaves one: counted at start-up (relay_spool_corrupt).
        first = spool_dir / "worker-0" if workers > 1 else spool_dir
        first.mkdir(parents=True)
        (first / segment_name(1)).write_bytes(MAGIC + b"\x00\x00")
        settings |= {
            "RELAY_SPOOL_DIR": str(spool_dir),
            "RELAY_SPOOL_MAX_BYTES": str(SPOOL_MAX_BYTES),
            "RELAY_SPOOL_AFTER_MS": "500",
        }
    env = serve_env(bootstrap, keys, unique_topic(pod), **settings)
    started = relayproc.launch(env, folder)  # the one harness for relay serve processes
    return Relay(pod, port, metrics_port, spool, started.proc, started.log)


def prometheus_config(relays: list[Relay], rules: Path) -> dict[str, Any]:
    """Scrape each relay as the ServiceMonitor would: job, namespace and pod labels."""
    return {
        "global": {
            "scrape_interval": f"{SCRAPE_S:g}s",
            "scrape_timeout": f"{SCRAPE_S:g}s",
            "evaluation_interval": f"{EVALUATE_S * 1000:g}ms",
        },
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [
                    {"targets": [r.target], "labels": {"namespace": NAMESPACE, "pod": r.pod}}
                    for r in relays
                ],
            }
        ],
    }


def start_prometheus(
    folder: Path, relays: list[Relay]
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Prometheus on a free 127.0.0.1 port with the chart's rules (LIVE_VALUES); its log."""
    rules = write_rules(folder, rule_groups(LIVE_VALUES))
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(relays, rules)), encoding="utf-8")
    port = free_port()
    log = folder / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                tool("PROMETHEUS", "prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=out,
        )
    return proc, port, log


@contextlib.contextmanager
def running(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Stop ``proc`` (SIGTERM, then SIGKILL) on the way out."""
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
async def stack(
    kafka_alerts: localkafka.Cluster,
    public_key_files: tuple[Path, ...],
    ed25519_key: Ed25519PrivateKey,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    """The alerts broker, three relays and a Prometheus with the chart's rules, all up."""
    folder = tmp_path_factory.mktemp("prometheus")
    bootstrap = kafka_alerts.bootstrap
    relays = [
        start_relay(folder, bootstrap, public_key_files, "one-worker", 1, spool=False),
        start_relay(folder, bootstrap, public_key_files, "two-workers-spool", 2, spool=True),
        start_relay(folder, bootstrap, public_key_files, "one-worker-spool", 1, spool=True),
    ]
    prometheus, port, log = start_prometheus(folder, relays)
    with contextlib.ExitStack() as stop:
        for proc in (prometheus, *(r.proc for r in relays)):
            stop.enter_context(running(proc))
        found = Stack(
            kafka_alerts, relays, f"http://127.0.0.1:{port}", time.time(), ed25519_key, log
        )
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            await wait_scraped(http, found)
        yield found


async def wait_scraped(http: aiohttp.ClientSession, stack: Stack, timeout_s: float = 60) -> None:
    """Until Prometheus has every relay up and reaching Kafka, and no alert says otherwise."""
    pods = {r.pod for r in stack.relays}
    async with asyncio.timeout(timeout_s):
        while True:
            with contextlib.suppress(aiohttp.ClientError, AssertionError):
                reachable = await stack.value(http, f'relay_kafka_reachable{{job="{JOB}"}} == 1')
                alerts = await stack.alerts(http)
                if set(reachable) == pods and not active(alerts, "HoopaiRelayKafkaUnreachable"):
                    return
            for relay in stack.relays:
                assert relay.proc.poll() is None, relay.log.read_text()
            await asyncio.sleep(0.5)


async def deliver(
    http: aiohttp.ClientSession,
    relay: Relay,
    key: Ed25519PrivateKey,
    *,
    body: bytes | None = None,
    signed: bool = True,
) -> int:
    """POST one delivery (a fresh ContactCreate unless ``body``); its status."""
    if body is None:
        body = as_delivery({"type": "ContactCreate", "locationId": f"loc-{os.urandom(3).hex()}"})
    headers = {"X-GHL-Signature": sign_ed25519(key, body)} if signed else {}
    # BytesIO: aiohttp warns about a large raw bytes body; the bytes sent are the same.
    async with http.post(relay.webhook_url, data=io.BytesIO(body), headers=headers) as response:
        await response.read()
        return response.status


async def deliver_accepted(
    http: aiohttp.ClientSession, relay: Relay, key: Ed25519PrivateKey
) -> None:
    """One delivery answered 200, sent again on the retryable status as a sender would (5 tries).

    A relay just started on a busy machine can miss the ack deadline of a topic's first record.
    """
    statuses = []
    for _ in range(5):
        statuses.append(await deliver(http, relay, key))
        if statuses[-1] == 200:
            return
        await asyncio.sleep(1)
    raise AssertionError(f"{relay.pod}: {statuses}")


@dataclass
class Seen:
    """When an alert was first seen pending and firing, and last seen at all."""

    pending: float | None = None
    firing: float | None = None


async def watch_alerts(
    http: aiohttp.ClientSession,
    stack: Stack,
    seen: dict[tuple[str, str], Seen],
    until: Any,
    timeout_s: float,
) -> None:
    """Poll /api/v1/alerts every 0.2 s, noting first pending/firing times, until ``until()``."""
    give_up = time.monotonic() + timeout_s
    while True:
        now = time.monotonic()
        alerts = await stack.alerts(http)
        for alert in alerts:
            where = alert["labels"].get("pod") or alert["labels"].get("cause") or ""
            entry = seen.setdefault((alert["labels"]["alertname"], where), Seen())
            if alert["state"] == "pending" and entry.pending is None:
                entry.pending = now
            if alert["state"] == "firing" and entry.firing is None:
                entry.firing = now
        if until(alerts):
            return
        states = sorted(
            (a["labels"]["alertname"], a["labels"].get("pod"), a["state"]) for a in alerts
        )
        assert now < give_up, f"not within {timeout_s:g} s; the alerts now: {states}"
        await asyncio.sleep(0.2)


def active(alerts: list[dict[str, Any]], name: str, state: str | None = None) -> set[str]:
    """The pods for which alert ``name`` is active (in ``state``, if given)."""
    return {
        a["labels"].get("pod", "")
        for a in alerts
        if a["labels"]["alertname"] == name and state in (None, a["state"])
    }


async def load(http: aiohttp.ClientSession, stack: Stack, stop: asyncio.Event) -> None:
    """A delivery to each relay every 0.3 s until ``stop``; the answers counted by status."""
    while not stop.is_set():
        statuses = await asyncio.gather(
            *(deliver(http, r, stack.key) for r in stack.relays), return_exceptions=True
        )
        for relay, status in zip(stack.relays, statuses, strict=True):
            key = f"{relay.pod}:{status}"
            stack.sent[key] = stack.sent.get(key, 0) + 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.3)


def seconds(value: str) -> float:
    """A Prometheus duration of seconds ("5s") in seconds."""
    assert value.endswith("s"), value
    return float(value[:-1])


async def test_kafka_outage_alerts_go_pending_firing_then_resolve(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """Broker down: the Kafka alert pending, then firing in time; spool alerts follow; resolved.

    Each relay's HoopaiRelayKafkaUnreachable fires within its ``for`` plus two scrape
    intervals of the broker's SIGKILL; the spool relays' NotDraining and NearFull go pending
    then firing; once the broker is back, the Kafka and NotDraining alerts resolve.
    """
    unreachable = "HoopaiRelayKafkaUnreachable"
    pods = {r.pod for r in stack.relays}
    spool_pods = {r.pod for r in stack.relays if r.spool}
    seen: dict[tuple[str, str], Seen] = {}
    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        assert not active(await stack.alerts(http), unreachable)
        for relay in stack.relays:
            await deliver_accepted(http, relay, stack.key)
        (node,) = stack.cluster.nodes
        sender = asyncio.create_task(load(http, stack, stop))
        try:
            stopped = time.monotonic()
            localkafka.kill_node(stack.cluster, node, signal.SIGKILL)

            def all_firing(alerts: list[dict[str, Any]]) -> bool:
                return active(alerts, unreachable, "firing") == pods and all(
                    active(alerts, name, "firing") >= spool_pods
                    for name in ("HoopaiRelaySpoolNotDraining", "HoopaiRelaySpoolNearFull")
                )

            await watch_alerts(http, stack, seen, all_firing, timeout_s=60)
            down_s = time.monotonic() - stopped
            localkafka.start_node(stack.cluster, node)
            await asyncio.to_thread(localkafka.wait_ready, stack.cluster)
            back = time.monotonic()
        finally:
            stop.set()
            await sender

        def resolved(alerts: list[dict[str, Any]]) -> bool:
            return not active(alerts, unreachable) and not active(
                alerts, "HoopaiRelaySpoolNotDraining"
            )

        await watch_alerts(http, stack, seen, resolved, timeout_s=90)
        resolved_s = time.monotonic() - back
        reachable = await stack.value(http, f'relay_kafka_reachable{{job="{JOB}"}}')

    bound = seconds(FOR[unreachable]) + 2 * SCRAPE_S
    figures = {f"{name} {where}": vars(s) for (name, where), s in sorted(seen.items())}
    with capsys.disabled():
        print(f"\nalerts after the broker stopped at t=0 (bound {bound:g} s): ")
        for (name, where), s in sorted(seen.items()):
            pending = f"{s.pending - stopped:5.1f}" if s.pending is not None else "    -"
            firing = f"{s.firing - stopped:5.1f}" if s.firing is not None else "    -"
            print(f"  {name:32} {where:20} pending {pending} s  firing {firing} s")
        print(f"  broker down {down_s:.1f} s; resolved {resolved_s:.1f} s after it was back")
        print(f"  answers during the test: {stack.sent}")
    for pod in pods:
        entry = seen[(unreachable, pod)]
        assert entry.pending is not None, figures
        assert entry.firing is not None, figures
        assert entry.pending < entry.firing, figures
        assert entry.firing - stopped <= bound, (pod, figures)
    for name in ("HoopaiRelaySpoolNotDraining", "HoopaiRelaySpoolNearFull"):
        for pod in spool_pods:
            entry = seen[(name, pod)]
            assert entry.pending is not None, (name, figures)
            assert entry.firing is not None, (name, figures)
            assert entry.pending < entry.firing, (name, figures)
    assert reachable == dict.fromkeys(pods, 1.0)
    # The spool relays answered 2xx throughout; the other one, the retryable status.
    assert stack.sent.get("one-worker:429", 0) > 0, stack.sent
    for pod in spool_pods:
        assert stack.sent.get(f"{pod}:200", 0) > 0, stack.sent
        assert not any(k.startswith(pod) and not k.endswith(":200") for k in stack.sent)


# --- the dashboard against that Prometheus -------------------------------------------------

DASHBOARD = CHART / "dashboards" / "hoopai-relay.json"
#: the panels that must show data after the traffic below: the ones an incident starts with
CORE_PANELS = {
    "Requests/s by outcome",
    "Request latency",
    "Kafka producer errors",
    "Kafka reachable by pod",
    "Retryable answers by cause",
    "Spool bytes by pod",
    "Spooled records by pod",
}
#: Grafana's maxDataPoints for a panel about 1000 pixels wide
MAX_DATA_POINTS = 1000


def regex_escape(value: str) -> str:
    """A variable's value in a regex, as Grafana's Prometheus data source escapes it."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\1", value)


def grafana_interval(range_s: float) -> float:
    """``$__interval``: the range over the data points, at least the scrape interval."""
    return max(SCRAPE_S, float(int(range_s / MAX_DATA_POINTS + 0.999)))


def substitute(expr: str, variables: dict[str, list[str]], range_s: float) -> str:
    """``expr`` with Grafana's variables replaced as Grafana does for this data source.

    A multi-value or "All" variable becomes ``(a|b)`` of its escaped values; ``$__interval``
    the step; ``$__rate_interval`` max($__interval + scrape interval, 4 x scrape interval).
    """
    interval = grafana_interval(range_s)
    out = expr.replace("$__rate_interval", f"{max(interval + SCRAPE_S, 4 * SCRAPE_S):g}s")
    out = out.replace("$__interval", f"{interval:g}s")
    for name, values in variables.items():
        joined = "(" + "|".join(regex_escape(v) for v in values) + ")"
        out = out.replace(f"${{{name}}}", joined).replace(f"${name}", joined)
    assert "$" not in out, out
    return out


async def template_variables(
    http: aiohttp.ClientSession, stack: Stack, dashboard: dict[str, Any]
) -> dict[str, list[str]]:
    """Each query variable with "All" selected: every value its label_values() query finds."""
    variables: dict[str, list[str]] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = substitute(variable["query"]["query"], variables, 3600)
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, query
        values = await stack.api(http, f"label/{match[2]}/values", **{"match[]": match[1]})
        assert values, f"${variable['name']}: no values for {query}"
        variables[variable["name"]] = sorted(values)
    return variables


async def test_every_dashboard_panel_query_runs_against_prometheus(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every panel's queries run without error, as Grafana sends them; core panels have data.

    The data: accepted, 401 and retryable answers here, and the spooled ones of the outage
    test before (same Prometheus), if it ran.
    """
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    # The dashboard the chart ships is this file.
    rendered = render(values={"dashboard": {"enabled": True}})
    configmap = next(o for o in find(rendered, "ConfigMap") if "hoopai-relay.json" in o["data"])
    assert json.loads(configmap["data"]["hoopai-relay.json"]) == dashboard
    one = next(r for r in stack.relays if not r.spool)
    stranger = Ed25519PrivateKey.generate()
    too_big = as_delivery({"type": "NoteCreate", "locationId": "loc-big", "body": "n" * 2_000_000})
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        for relay in stack.relays:
            await deliver_accepted(http, relay, stack.key)
            assert await deliver(http, relay, stranger) == 401
            assert await deliver(http, relay, stack.key, signed=False) == 401
        # Over the broker's message.max.bytes: a producer error, the retryable status.
        assert await deliver(http, one, stack.key, body=too_big) == 429
        await asyncio.sleep(2 * SCRAPE_S + 1)  # two scrapes after the last of it
        variables = await template_variables(http, stack, dashboard)
        assert variables == {"namespace": [NAMESPACE], "job": [JOB]}
        end = time.time()
        range_s = end - stack.started
        returned: dict[str, bool] = {}
        outcomes: set[str] = set()
        for panel in dashboard["panels"]:
            series = []
            for target in panel["targets"]:
                query = substitute(target["expr"], variables, range_s)
                data = await stack.api(
                    http,
                    "query_range",
                    query=query,
                    start=f"{stack.started:.3f}",
                    end=f"{end:.3f}",
                    step=f"{grafana_interval(range_s):g}",
                )
                assert data["resultType"] == "matrix", query
                series += [s for s in data["result"] if s["values"]]
            returned[panel["title"]] = bool(series)
            if panel["title"] == "Requests/s by outcome":
                outcomes = {s["metric"].get("outcome", "") for s in series}
    with capsys.disabled():
        print("\ndashboard panels against Prometheus:")
        for title, has_data in returned.items():
            print(f"  {title:36} {'data' if has_data else 'no data'}")
    missing = {t for t in CORE_PANELS if not returned.get(t)}
    assert not missing, f"core panels without data: {missing}"
    assert {"accepted", "unauthenticated", "unavailable"} <= outcomes, outcomes


async def test_promtool_check_metrics_on_the_relays_scrapes(stack: Stack) -> None:
    """`promtool check metrics` finds no problem in a real scrape: one process, two workers."""
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        for relay in stack.relays:
            async with http.get(f"http://{relay.target}/metrics") as response:
                text = await response.text()
            assert "relay_requests_total{" in text
            result = promtool("check", "metrics", stdin=text)
            assert result.returncode == 0, (relay.pod, result.stdout + result.stderr)
