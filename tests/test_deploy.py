"""compose.yaml, the Prometheus config and alert rules, and the Grafana dashboard, read against the service.

Docker cannot pull images here, so the compose file is checked as data: its services, volumes, profiles,
commands (parsed by the real CLI), healthchecks (requested from a real receiver) and mounted files; the
metric names in the dashboard and the rules are compared with what a real receiver and worker expose.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from runinfra_webhooks.service.cli.main import build_parser
from tests.builders import example_event, signed_delivery
from tests.processes import Proc, stack_env, wait_until
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
APP_SERVICES = ("receiver", "worker", "console")
MONITORING = {"prometheus", "grafana", "redis-exporter"}
# Metrics that come from Prometheus itself or the Redis exporter, not from our processes.
EXTERNAL_METRICS = {"up", "redis_up"}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def service(name: str) -> dict[str, Any]:
    result: dict[str, Any] = compose()["services"][name]
    return result


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def healthcheck_url(name: str) -> str:
    test = " ".join(service(name)["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1:\d+/[a-z/-]*", test)
    assert match, f"{name}'s healthcheck requests no local URL"
    return match.group(0)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers not followed by '(' that are not keywords/labels."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    without_grouping = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_labels)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_grouping)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", without_ranges))
    keywords = {"and", "or", "unless", "offset", "bool", "le", "inf", "nan"}
    return {n for n in names if n not in keywords and not n.isdigit()}


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana/dashboards/runinfra-webhooks.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def used_metrics(prefix: str) -> set[str]:
    names: set[str] = set()
    for expr in dashboard_exprs() + rule_exprs():
        names |= promql_metric_names(expr)
    return {n for n in names if n.startswith(prefix)}


def exposed(text: str) -> set[str]:
    """Every sample name a /metrics page can have, also for labelled families with no sample yet."""
    names: set[str] = set()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",), "summary": ("_sum", "_count", "_created")}
    for family in text_string_to_metric_families(text):
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def test_compose_runs_redis_with_aof_on_a_volume() -> None:
    """Redis keeps an append-only file on a named volume, and the apps wait for it to be healthy."""
    redis = service("redis")
    command = redis["command"]
    assert option(command, "--appendonly") == "yes"
    assert "redis-data:/data" in redis["volumes"] and "redis-data" in compose()["volumes"]
    assert redis["healthcheck"]["test"][-1] == "ping"
    for name in APP_SERVICES:
        assert service(name)["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_runs_two_receivers_behind_one_port() -> None:
    """Two receiver replicas publish no port themselves; the ingress publishes one and proxies to them."""
    receiver, ingress = service("receiver"), service("ingress")
    assert receiver["deploy"]["replicas"] == 2 and "ports" not in receiver
    assert len(ingress["ports"]) == 1
    conf = (DEPLOY / "nginx.conf").read_text()
    port = option(receiver["command"], "--port")
    assert f"server receiver:{port}" in conf and "proxy_pass http://receivers;" in conf
    assert ingress["ports"][0].endswith(":8000") and "listen 8000;" in conf


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_commands_are_commands_of_the_cli(name: str) -> None:
    """Each app service's command is accepted by the real argument parser of the console script."""
    args = build_parser().parse_args(service(name)["command"])
    assert args.command == service(name)["command"][0]


def test_compose_gives_the_console_its_token_and_keeps_secrets_out_of_the_file() -> None:
    """The console gets RUNINFRA_CONSOLE_TOKEN; secrets come from the environment, never written in the file."""
    console = service("console")
    assert console["environment"]["RUNINFRA_CONSOLE_TOKEN"].startswith("${RUNINFRA_CONSOLE_TOKEN:?")
    env = console["environment"]
    for secret in ("RUNINFRA_WEBHOOK_SECRET", "RUNINFRA_API_KEY"):
        assert env[secret].startswith("${"), secret
    assert all(p.startswith("127.0.0.1:") for p in console["ports"])


def test_compose_monitoring_is_an_optional_profile() -> None:
    """Prometheus, Grafana and the Redis exporter start only with --profile monitoring; nothing else does."""
    services = compose()["services"]
    profiled = {name for name, s in services.items() if "profiles" in s}
    assert profiled == MONITORING
    assert all(services[name]["profiles"] == ["monitoring"] for name in MONITORING)


def test_compose_mounts_only_files_that_exist() -> None:
    """Every bind mount of a repository file or folder points at something in the repository."""
    for name, s in compose()["services"].items():
        for volume in s.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_receiver_healthcheck_and_published_port_answer(receiver_url: str) -> None:
    """The receiver's healthcheck route answers 200 on a live receiver, on the port its command serves."""
    url = urlparse(healthcheck_url("receiver"))
    assert str(url.port) == option(service("receiver")["command"], "--port")
    assert httpx.get(receiver_url + url.path, timeout=5).status_code == 200


def test_worker_and_console_healthchecks_use_their_own_ports() -> None:
    """The worker is checked on its metrics port, the console on its own port: both from their commands."""
    worker, console = service("worker"), service("console")
    assert str(urlparse(healthcheck_url("worker")).port) == option(worker["command"], "--metrics-port")
    assert str(urlparse(healthcheck_url("console")).port) == option(console["command"], "--port")


def test_prometheus_scrapes_the_ports_the_services_serve() -> None:
    """Each scrape job names a compose service and the port its command serves metrics on."""
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    receiver_sd = jobs["runinfra-receiver"]["dns_sd_configs"][0]
    worker_sd = jobs["runinfra-worker"]["dns_sd_configs"][0]
    assert (receiver_sd["names"], str(receiver_sd["port"])) == (["receiver"], option(service("receiver")["command"],
                                                                                     "--port"))
    assert (worker_sd["names"], str(worker_sd["port"])) == (["worker"], option(service("worker")["command"],
                                                                               "--metrics-port"))
    (target,) = jobs["redis"]["static_configs"][0]["targets"]
    assert target.split(":")[0] in compose()["services"]
    mounts = {v.split(":")[1] for v in service("prometheus")["volumes"]}
    assert set(config["rule_files"]) <= mounts


def test_grafana_provisioning_finds_the_dashboard_and_its_datasource() -> None:
    """The provider's path is where compose mounts the dashboards, and every panel uses the provisioned uid."""
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    mounts = dict(v.split(":")[:2][::-1] for v in service("grafana")["volumes"] if v.startswith("./"))
    assert mounts[provider["providers"][0]["options"]["path"]] == "./deploy/grafana/dashboards"
    uid = datasource["datasources"][0]["uid"]
    assert urlparse(datasource["datasources"][0]["url"]).hostname == "prometheus"
    dash = json.loads((DEPLOY / "grafana/dashboards/runinfra-webhooks.json").read_text())
    assert dash["panels"] and all(p["datasource"]["uid"] == uid for p in dash["panels"])
    assert all(t["datasource"]["uid"] == uid for p in dash["panels"] for t in p["targets"])


def test_dashboard_and_rules_use_only_metrics_the_receiver_exposes(receiver_url: str) -> None:
    """Every runinfra_webhook_* name in the dashboard and the alert rules is on a live receiver's /metrics."""
    body, headers = signed_delivery(example_event("deployment.created"))
    assert httpx.post(receiver_url + "/webhooks/runinfra", content=body, headers=headers).status_code == 202
    names = exposed(httpx.get(receiver_url + "/metrics", timeout=5).text)
    wanted = used_metrics("runinfra_webhook_")
    assert wanted and wanted <= names, wanted - names


def test_dashboard_and_rules_use_only_metrics_the_worker_exposes(redis_url: str, tmp_path: Path) -> None:
    """Every runinfra_worker_* name in the dashboard and the rules is on a live `worker --metrics-port` page."""
    port = free_port()
    env = stack_env(redis_url, "http://127.0.0.1:9/v1", tmp_path / "artifacts")
    worker = Proc(["worker", "--metrics-port", str(port)], env, tmp_path / "worker.log")
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        def scraped() -> str:
            try:
                return httpx.get(url, timeout=1).text
            except httpx.HTTPError:
                return ""

        wait_until(scraped, timeout=20, what="the worker's /metrics")
        names = exposed(scraped())
    finally:
        worker.terminate()
    wanted = used_metrics("runinfra_worker_")
    assert wanted and wanted <= names, wanted - names


def test_every_metric_in_dashboard_and_rules_is_ours_or_known() -> None:
    """No expression uses a metric from neither our processes nor Prometheus and the Redis exporter."""
    names: set[str] = set()
    for expr in dashboard_exprs() + rule_exprs():
        names |= promql_metric_names(expr)
    assert names, "no metric names found"
    stray = {n for n in names if not n.startswith(("runinfra_webhook_", "runinfra_worker_"))} - EXTERNAL_METRICS
    assert not stray


def test_promql_metric_names_reads_names_not_functions_labels_or_keywords() -> None:
    """The expression reader the checks above rely on picks out exactly the metric names."""
    expr = ('histogram_quantile(0.99, sum by (le, route) (rate(a_seconds_bucket{route="/x",le="1"}[5m])))'
            ' or on() vector(0) > b_total offset 5m')
    assert promql_metric_names(expr) == {"a_seconds_bucket", "b_total"}


def _promtool() -> str:
    found = shutil.which("promtool")
    # Never a skip: scripts/bootstrap and .ci/run install Debian's prometheus package, which ships it.
    assert found is not None, "promtool is not installed (scripts/bootstrap installs Debian's prometheus package)"
    return found


def test_alert_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts the alert rules."""
    out = subprocess.run([_promtool(), "check", "rules", str(DEPLOY / "prometheus/alerts.yml")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_rules_fire_on_their_unit_test_series() -> None:
    """`promtool test rules`: each alert fires on the series that should raise it, and not before."""
    out = subprocess.run([_promtool(), "test", "rules", "alerts_test.yml"], cwd=DEPLOY / "prometheus",
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheus_config_passes_promtool_check(tmp_path: Path) -> None:
    """`promtool check config` accepts the scrape config, with the rules file where compose mounts it."""
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    shutil.copy(DEPLOY / "prometheus/alerts.yml", tmp_path / "alerts.yml")
    config["rule_files"] = [str(tmp_path / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = subprocess.run([_promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
