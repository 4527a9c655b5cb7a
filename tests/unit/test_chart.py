"""The Helm chart (helm/recofleet), linted and rendered offline through Helm's Go SDK.

Every manifest of every combination of values is validated against the Kubernetes schemas
(kubernetes-validate, strict), then checked for what an operator relies on: probes,
resources and a hardened security context on every pod, only the gateway exposed, secrets
only through Secret references, each service on a store of its own, the one-machine
defaults refused with a message naming the value to set. Each combination renders once.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from sqlalchemy import create_engine, text

from services.common import migrations

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "recofleet"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
KUBE_VERSION = "1.30.0"
RELEASE = "shop"
NAMESPACE = "recofleet"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

SERVICES = ("ingestion", "profiles", "retrieval", "ranking", "campaigns", "analytics")
SERVICE_PORTS = dict(zip(SERVICES, range(50051, 50057), strict=True))
# Who dials whom (services/gateway/clients.py, services/campaigns/server.py).
CALLERS = {name: {"gateway"} for name in SERVICES} | {
    "profiles": {"gateway", "campaigns"},
    "analytics": {"gateway", "campaigns"},
}
# The least a user passes, as `helm install --set` would.
MINIMUM_SET = (
    "kafka.bootstrapServers=kafka-0.kafka:9092",
    "postgresql.existingSecret=recofleet-postgresql",
    "modelStore.s3.bucket=recofleet-models",
    "pii.existingSecret=recofleet-pii",
)
SECRET_NAMES = {"recofleet-postgresql", "recofleet-pii"}
SECRET_LOOKING = re.compile(r"(?i)(PASSWORD|SECRET|TOKEN|CREDENTIAL|_KEY$|_KEY_)")
# The prometheus-operator kinds: no schema ships for them, they get structural checks.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}


def set_values(*expressions: str) -> dict[str, Any]:
    """Values as `--set a=b,c=d` makes them (list items set one by one, like Helm does)."""
    return helm.parse_set_string(",".join(expressions)) if expressions else {}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def minimum(*more: str) -> dict[str, Any]:
    return set_values(*MINIMUM_SET, *more)


COMBINATIONS: dict[str, dict[str, Any]] = {
    "minimum": minimum(),
    "autoscaling": merge(
        minimum(*(f"{name}.autoscaling.enabled=true" for name in (*SERVICES, "gateway"))),
        set_values("retrieval.autoscaling.targetMemoryUtilizationPercentage=80"),
    ),
    "ingress": minimum(
        "ingress.enabled=true",
        "ingress.className=nginx",
        "ingress.hosts[0].host=reco.example.com",
        "ingress.hosts[0].paths[0].path=/",
        "ingress.hosts[0].paths[0].pathType=Prefix",
        "ingress.tls[0].secretName=reco-tls",
        "ingress.tls[0].hosts[0]=reco.example.com",
        "gateway.trustedProxies=10.42.0.0/16",
    ),
    "s3": minimum(
        "modelStore.s3.endpoint=http://minio.storage:9000",
        "modelStore.s3.region=eu-west-1",
        "modelStore.s3.prefix=shop-eu",
        "modelStore.s3.existingSecret=recofleet-s3",
    ),
    "sasl": minimum(
        r"kafka.bootstrapServers=kafka-0.kafka:9096\,kafka-1.kafka:9096",
        "kafka.securityProtocol=SASL_SSL",
        "kafka.saslMechanism=SCRAM-SHA-512",
        "kafka.existingSecret=recofleet-kafka",
        "kafka.tls.existingSecret=recofleet-kafka-ca",
        "kafka.tls.clientCertificate=true",
    ),
    "everything": minimum(
        "gateway.service.type=LoadBalancer",
        "gateway.service.loadBalancerSourceRanges[0]=203.0.113.0/24",
        "gateway.adminKeySecret=recofleet-admin",
        "gateway.segmentWriteKeySecret=recofleet-segment",
        "postgresql.isolation=database",
        "serviceMonitor.enabled=true",
        "prometheusRule.enabled=true",
        "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::1:role/reco",
        "fleet.env.RECOFLEET_GATEWAY_RATE_LIMIT_PER_S=200",
        "profiles.env.RECOFLEET_PROFILES_RECENT_ITEMS=30",
        "trainer.timeZone=Europe/Paris",
        "networkPolicy.egress.postgresql.to[0].ipBlock.cidr=10.20.0.0/24",
    ),
}


def documented_install() -> tuple[str, str, dict[str, Any]]:
    """Release, namespace and values of the `helm install` command in docs/deploy.md, with
    the values file it names (the YAML block that starts with `# <that file>`)."""
    text_ = DEPLOY_DOC.read_text()
    blocks = re.findall(r"```(\w*)\n(.*?)```", text_, flags=re.S)
    commands = [body for lang, body in blocks if lang == "sh" and "helm install" in body]
    assert len(commands) == 1, "docs/deploy.md should show one `helm install` command"
    words = shlex.split(commands[0].replace("\\\n", " "))
    words = words[words.index("helm") :]
    assert words[:2] == ["helm", "install"]
    release, chart = words[2], words[3]
    assert (ROOT / chart).resolve() == CHART
    namespace, values, i = "default", {}, 4
    while i < len(words):
        flag, arg = words[i], words[i + 1]
        if flag in ("--namespace", "-n"):
            namespace = arg
        elif flag in ("-f", "--values"):
            files = [
                body for lang, body in blocks if lang == "yaml" and body.startswith(f"# {arg}")
            ]
            assert len(files) == 1, f"docs/deploy.md should show {arg} once"
            values = merge(values, yaml.safe_load(files[0]))
        elif flag == "--set":
            values = merge(values, helm.parse_set_string(arg))
        else:
            raise AssertionError(
                f"the test does not know the flag {flag} of the documented install"
            )
        i += 2
    return release, namespace, values


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: dict[str, Any], **options: Any) -> dict[str, str]:
    return chart.render(
        values,
        name=options.get("name", RELEASE),
        namespace=options.get("namespace", NAMESPACE),
        is_install=True,
    )


def documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    return [
        doc
        for path, body in sorted(rendered.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(body)
        if doc
    ]


class Rendered:
    """The manifests of one combination, by kind and name."""

    def __init__(self, values: dict[str, Any], rendered: dict[str, str]) -> None:
        self.values = values
        self.notes = next(body for path, body in rendered.items() if path.endswith("NOTES.txt"))
        self.docs = documents(rendered)

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [doc for doc in self.kind(kind) if doc["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind} {name}: {len(found)} found"
        return found[0]

    def deployment(self, component: str) -> dict[str, Any]:
        return self.one("Deployment", f"{RELEASE}-recofleet-{component}")

    def pods(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every pod spec the release makes: Deployments, CronJobs' and the Job's."""
        for doc in self.docs:
            if doc["kind"] == "Deployment":
                yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
            elif doc["kind"] == "CronJob":
                yield (
                    doc["metadata"]["name"],
                    doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                )
            elif doc["kind"] == "Job":
                yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


@pytest.fixture(scope="module", params=sorted(COMBINATIONS))
def rendered(request: pytest.FixtureRequest, chart: helm.Chart) -> Rendered:
    values = COMBINATIONS[request.param]
    return Rendered(values, render(chart, values))


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def env_values(container: dict[str, Any]) -> dict[str, str]:
    return {name: entry["value"] for name, entry in env_of(container).items() if "value" in entry}


def runnable(module: str) -> bool:
    """Whether `python -m module` finds something to run (a package needs a __main__)."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    return True


def render_error(chart: helm.Chart, values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as refused:
        render(chart, values)
    return str(refused.value)


# Lint and refusals.


def test_lint_is_clean_with_the_minimum_values_and_the_defaults() -> None:
    for values in (minimum(), None):
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["errors"] == [] and problems == [], report


def test_default_values_are_refused_naming_what_to_set(chart: helm.Chart) -> None:
    message = render_error(chart, {})
    assert "kafka.bootstrapServers is required" in message
    assert "local log bus" in message


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("kafka.bootstrapServers", "local log bus"),
        ("postgresql.existingSecret", "SQLite"),
        ("modelStore.s3.bucket", "local model folder"),
        ("pii.existingSecret", "RECOFLEET_PII_SECRET"),
    ],
)
def test_each_required_value_is_refused_by_name(
    chart: helm.Chart, missing: str, named: str
) -> None:
    values = set_values(*(s for s in MINIMUM_SET if not s.startswith(missing)))
    message = render_error(chart, values)
    assert f"{missing} is required" in message and named in message


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("fleet.env.RECOFLEET_BUS=local", "fleet.env.RECOFLEET_BUS"),
        ("profiles.env.RECOFLEET_BUS=local", "profiles.env.RECOFLEET_BUS"),
        (
            "profiles.env.RECOFLEET_PROFILES_DATABASE_URL=sqlite:////data/profiles.db",
            "profiles.env.RECOFLEET_PROFILES_DATABASE_URL",
        ),
        (
            "retrieval.env.RECOFLEET_MODEL_STORE_KIND=local",
            "retrieval.env.RECOFLEET_MODEL_STORE_KIND",
        ),
        (
            "gateway.env.RECOFLEET_PROFILES_ADDR=127.0.0.1:50052",
            "gateway.env.RECOFLEET_PROFILES_ADDR",
        ),
        ("trainer.env.SHOP_API_TOKEN=abc", "trainer.env.SHOP_API_TOKEN looks like a secret"),
        ("migrations.env.DB_PASSWORD=abc", "migrations.env.DB_PASSWORD looks like a secret"),
    ],
)
def test_env_cannot_bring_back_local_defaults_or_plain_secrets(
    chart: helm.Chart, setting: str, named: str
) -> None:
    assert named in render_error(chart, minimum(setting))


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("kafka.saslMechanism=PLAIN", "kafka.securityProtocol SASL_PLAINTEXT or SASL_SSL"),
        ("termination.gracePeriodSeconds=8", "termination.gracePeriodSeconds (8)"),
        ("fleet.processedRetentionHours=100", "fleet.processedRetentionHours"),
        (
            "ranking.autoscaling.enabled=true,ranking.autoscaling.minReplicas=5,"
            "ranking.autoscaling.maxReplicas=3",
            "ranking.autoscaling.minReplicas (5)",
        ),
    ],
)
def test_inconsistent_values_are_refused(chart: helm.Chart, setting: str, named: str) -> None:
    assert named in render_error(chart, minimum(setting))


@pytest.mark.parametrize(
    ("setting", "path"),
    [
        ("profiles.replicas=two", "/profiles/replicas"),
        ("retrieval.replica=3", "replica"),
        ("kafka.securityProtocol=TLS", "/kafka/securityProtocol"),
        ("kafka.bootstrapServers=kafka-0", "/kafka/bootstrapServers"),
        ("modelStore.s3.endpoint=minio:9000", "/modelStore/s3/endpoint"),
        ("postgresql.isolation=shared", "/postgresql/isolation"),
        ("gateway.service.type=ExternalName", "/gateway/service/type"),
        ("ranking.probes.liveness.type=http", "/ranking/probes/liveness/type"),
        ("gateway.port=80", "/gateway/port"),
        ("ingestion.resources.requests.cpu=lots", "/ingestion/resources/requests/cpu"),
        ("fleet.logFormat=xml", "/fleet/logFormat"),
        ("tracing.otlpEndpoint=collector:4317", "/tracing/otlpEndpoint"),
    ],
)
def test_schema_refuses_wrong_values_at_install(chart: helm.Chart, setting: str, path: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        render(chart, minimum(setting))
    assert path in str(refused.value)


# Every combination: valid manifests, and what an operator relies on.


def test_every_manifest_is_valid_for_kubernetes(rendered: Rendered) -> None:
    assert rendered.docs
    for doc in rendered.docs:
        if doc["kind"] in CUSTOM_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {where}: {exc.message}")


def test_object_names_and_labels(rendered: Rendered) -> None:
    for doc in rendered.docs:
        name, labels = doc["metadata"]["name"], doc["metadata"]["labels"]
        assert name.startswith(f"{RELEASE}-recofleet"), name
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert doc["kind"] != "Secret", "the chart takes Secrets by name, it never makes one"


def test_every_pod_is_hardened_with_resources(rendered: Rendered) -> None:
    pods = list(rendered.pods())
    assert len(pods) == 10  # six services, the gateway, two trainers, the migrations
    for name, pod in pods:
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["tmp"] and "emptyDir" in volumes["data"], name
        for container in pod["containers"]:
            hardened = container["securityContext"]
            assert hardened["readOnlyRootFilesystem"] is True, name
            assert hardened["allowPrivilegeEscalation"] is False, name
            assert hardened["capabilities"] == {"drop": ["ALL"]}, name
            assert hardened["seccompProfile"] == {"type": "RuntimeDefault"}, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/tmp"] == "tmp" and mounts["/data"] == "data", name
            assert env_values(container)["RECOFLEET_DATA_DIR"] == "/data", name
            requests = container["resources"]["requests"]
            assert requests["cpu"] and requests["memory"], name
            assert container["resources"]["limits"]["memory"], name


def test_every_deployment_has_probes_and_stops_gracefully(rendered: Rendered) -> None:
    deployments = rendered.kind("Deployment")
    assert len(deployments) == 7
    grace = rendered.values.get("termination", {}).get("gracePeriodSeconds", 45)
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        name = deployment["metadata"]["name"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in container, f"{name} has no {probe}"
        sleep = container["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep[0] == "sleep"
        # The servers' grace (5 s) and the consumers' stop come after the preStop sleep.
        assert pod["terminationGracePeriodSeconds"] == grace > int(sleep[1]) + 5, name


def test_services_are_probed_on_the_grpc_health_service(rendered: Rendered) -> None:
    for service in SERVICES:
        (container,) = rendered.deployment(service)["spec"]["template"]["spec"]["containers"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        assert container["readinessProbe"]["grpc"] == {"port": port}, service
        liveness = container["livenessProbe"]
        if service in ("ingestion", "retrieval"):
            # Their health is the brokers' answer / a loaded model: restarting fixes neither.
            assert liveness["tcpSocket"] == {"port": "grpc"}, service
        else:
            assert liveness["grpc"] == {"port": port}, service
    (gateway,) = rendered.deployment("gateway")["spec"]["template"]["spec"]["containers"]
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"]["path"] in ("/healthz", "/readyz")
    assert gateway["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_each_service_listens_on_all_interfaces_and_is_dialled_through_its_service(
    rendered: Rendered,
) -> None:
    services = {doc["metadata"]["name"]: doc for doc in rendered.kind("Service")}
    for service in SERVICES:
        (container,) = rendered.deployment(service)["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", "-m", f"services.{service}"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        env = env_values(container)
        assert env[f"RECOFLEET_{service.upper()}_ADDR"] == f"0.0.0.0:{port}"
        for caller in CALLERS[service]:
            (calling,) = rendered.deployment(caller)["spec"]["template"]["spec"]["containers"]
            address = env_values(calling)[f"RECOFLEET_{service.upper()}_ADDR"]
            host, _, dialled = address.rpartition(":")
            name, namespace, suffix = host.split(".")
            assert (namespace, suffix) == (NAMESPACE, "svc"), address
            target = next(p for p in services[name]["spec"]["ports"] if p["name"] == "grpc")
            assert int(dialled) == target["port"] and target["targetPort"] == "grpc"
            assert services[name]["spec"]["selector"]["app.kubernetes.io/component"] == service
    (gateway,) = rendered.deployment("gateway")["spec"]["template"]["spec"]["containers"]
    env = env_values(gateway)
    assert env["RECOFLEET_GATEWAY_HOST"] == "0.0.0.0"
    assert int(env["RECOFLEET_GATEWAY_PORT"]) == gateway["ports"][0]["containerPort"]


def test_only_the_gateway_is_exposed(rendered: Rendered) -> None:
    gateway = f"{RELEASE}-recofleet-gateway"
    for service in rendered.kind("Service"):
        if service["metadata"]["name"] != gateway:
            assert service["spec"]["type"] == "ClusterIP", service["metadata"]["name"]
    expected = rendered.values.get("gateway", {}).get("service", {}).get("type", "ClusterIP")
    assert rendered.one("Service", gateway)["spec"]["type"] == expected
    ingresses = rendered.kind("Ingress")
    assert len(ingresses) == (1 if rendered.values.get("ingress", {}).get("enabled") else 0)
    for ingress in ingresses:
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"] == {"name": gateway, "port": {"name": "http"}}


def test_secrets_reach_pods_only_through_secret_references(rendered: Rendered) -> None:
    configured = set(SECRET_NAMES)
    for path in (
        ("kafka", "existingSecret"),
        ("kafka", "tls", "existingSecret"),
        ("modelStore", "s3", "existingSecret"),
        ("gateway", "adminKeySecret"),
        ("gateway", "segmentWriteKeySecret"),
    ):
        node: Any = rendered.values
        for key in path:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if node:
            configured.add(node)
    referenced = set()
    for name, pod in rendered.pods():
        for container in pod["containers"]:
            for entry in container.get("env", []):
                if "value" in entry:
                    assert not SECRET_LOOKING.search(entry["name"]), f"{name}: {entry['name']}"
                    assert not re.search(r"://[^/\s]*@", entry["value"]), f"{name}: {entry}"
                    if entry["name"].endswith("_DATABASE_URL"):
                        assert entry["value"].startswith("$(POSTGRESQL_BASE_URL)"), entry
                else:
                    referenced.add(entry["valueFrom"]["secretKeyRef"]["name"])
            for source in container.get("envFrom", []):
                referenced.add(source["secretRef"]["name"])
        for volume in pod["volumes"]:
            if "secret" in volume:
                referenced.add(volume["secret"]["secretName"])
    assert referenced == configured


def test_each_service_gets_a_store_of_its_own(rendered: Rendered) -> None:
    isolation = rendered.values.get("postgresql", {}).get("isolation", "schema")
    stores = {}
    for component in (*SERVICES, "gateway"):
        (container,) = rendered.deployment(component)["spec"]["template"]["spec"]["containers"]
        env = env_of(container)
        urls = {name: entry for name, entry in env.items() if name.endswith("_DATABASE_URL")}
        if component == "ingestion":
            assert urls == {}
            continue
        assert set(urls) == {f"RECOFLEET_{component.upper()}_DATABASE_URL"}, component
        (url,) = urls.values()
        if isolation == "schema":
            base = env["POSTGRESQL_BASE_URL"]["valueFrom"]["secretKeyRef"]
            assert base == {"name": "recofleet-postgresql", "key": "url"}
            # Kubernetes expands $(VAR) only from variables defined before it.
            assert list(env).index("POSTGRESQL_BASE_URL") < list(env).index(url["name"])
            assert url["value"] == f"$(POSTGRESQL_BASE_URL)?options=-csearch_path%3D{component}"
            stores[component] = url["value"]
        else:
            ref = url["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "recofleet-postgresql", "key": f"{component}-url"}
            stores[component] = ref["key"]
    assert len(set(stores.values())) == len(stores) == len(migrations.SERVICES)


def test_migrations_run_before_install_and_upgrade_for_every_store(rendered: Rendered) -> None:
    job = rendered.one("Job", f"{RELEASE}-recofleet-migrations")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    pod = job["spec"]["template"]["spec"]
    # It runs before the release's service account exists.
    assert "serviceAccountName" not in pod
    (container,) = pod["containers"]
    assert container["command"][:2] == ["python", "-c"]
    compile(container["command"][2], "migrations-job", "exec")
    env = env_values(container)
    assert env["MIGRATE_STORES"].split() == sorted(migrations.SERVICES)
    for store in migrations.SERVICES:
        assert f"RECOFLEET_{store.upper()}_DATABASE_URL" in env_of(container)


def test_trainers_run_on_a_schedule_with_the_model_store(rendered: Rendered) -> None:
    expected = {"train": ["retrieval"], "train-ranker": []}
    for command, stores in expected.items():
        cron = rendered.one("CronJob", f"{RELEASE}-recofleet-{command}")
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["python", "-m", "services.cli", command]
        env = env_of(container)
        assert env["RECOFLEET_MODEL_STORE_KIND"]["value"] == "s3"
        assert env["RECOFLEET_BUS"]["value"] == "kafka"
        found = sorted(n for n in env if n.endswith("_DATABASE_URL"))
        assert found == [f"RECOFLEET_{s.upper()}_DATABASE_URL" for s in stores]


def test_model_store_is_the_bucket_for_whoever_reads_or_writes_models(rendered: Rendered) -> None:
    s3 = rendered.values["modelStore"]["s3"]
    users = {
        f"{RELEASE}-recofleet-{name}" for name in ("retrieval", "ranking", "train", "train-ranker")
    }
    for name, pod in rendered.pods():
        (container,) = pod["containers"]
        env = env_of(container)
        if name not in users:
            assert not any(n.startswith(("RECOFLEET_MODEL_STORE", "AWS_")) for n in env), name
            continue
        assert env["RECOFLEET_MODEL_STORE_KIND"]["value"] == "s3"
        assert env["RECOFLEET_MODEL_STORE_S3_BUCKET"]["value"] == s3["bucket"]
        if "endpoint" in s3:
            assert env["RECOFLEET_MODEL_STORE_S3_ENDPOINT"]["value"] == s3["endpoint"]
            assert env["RECOFLEET_MODEL_STORE_S3_REGION"]["value"] == s3["region"]
            assert env["RECOFLEET_MODEL_STORE_S3_PREFIX"]["value"] == s3["prefix"]
        else:
            assert "RECOFLEET_MODEL_STORE_S3_ENDPOINT" not in env
            assert "RECOFLEET_MODEL_STORE_S3_PREFIX" not in env
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if "existingSecret" in s3:
                ref = env[key]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": s3["existingSecret"], "key": key}
            else:
                assert key not in env


def test_every_process_logs_json_and_traces_only_to_a_given_collector(chart: helm.Chart) -> None:
    endpoint = "http://otel-collector.observability:4317"
    for values, traced in ((minimum(), False), (minimum(f"tracing.otlpEndpoint={endpoint}"), True)):
        pods = Rendered(values, render(chart, values)).pods()
        for name, pod in pods:
            (container,) = pod["containers"]
            env = env_values(container)
            assert env["RECOFLEET_LOG_FORMAT"] == "json", name
            if traced:
                assert env["RECOFLEET_OTLP_ENDPOINT"] == endpoint, name
                assert float(env["RECOFLEET_TRACE_SAMPLE_RATIO"]) == 1.0, name
            else:
                assert "RECOFLEET_OTLP_ENDPOINT" not in env, name


def test_kafka_settings_reach_every_bus_user_and_only_them(rendered: Rendered) -> None:
    kafka = rendered.values["kafka"]
    no_bus = {f"{RELEASE}-recofleet-gateway", f"{RELEASE}-recofleet-migrations"}
    for name, pod in rendered.pods():
        (container,) = pod["containers"]
        env = env_values(container)
        secrets = [s["secretRef"]["name"] for s in container.get("envFrom", [])]
        if name in no_bus:
            assert "RECOFLEET_BUS" not in env and secrets == [], name
            continue
        assert env["RECOFLEET_BUS"] == "kafka", name
        assert env["RECOFLEET_KAFKA_BOOTSTRAP_SERVERS"] == kafka["bootstrapServers"]
        assert env["RECOFLEET_KAFKA_CLIENT_ID"] == name
        assert secrets == ([kafka["existingSecret"]] if "existingSecret" in kafka else [])
        if "securityProtocol" in kafka:
            assert env["RECOFLEET_KAFKA_SECURITY_PROTOCOL"] == kafka["securityProtocol"]
            assert env["RECOFLEET_KAFKA_SASL_MECHANISM"] == kafka["saslMechanism"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        if "tls" in kafka:
            assert mounts["kafka-tls"]["readOnly"] is True
            directory = mounts["kafka-tls"]["mountPath"]
            assert env["RECOFLEET_KAFKA_SSL_CAFILE"] == f"{directory}/ca.crt"
            assert env["RECOFLEET_KAFKA_SSL_KEYFILE"] == f"{directory}/tls.key"
        else:
            assert "kafka-tls" not in mounts and "RECOFLEET_KAFKA_SSL_CAFILE" not in env


def test_autoscalers_own_the_replica_counts_they_scale(rendered: Rendered) -> None:
    scaled = {
        doc["spec"]["scaleTargetRef"]["name"]: doc
        for doc in rendered.kind("HorizontalPodAutoscaler")
    }
    for component in (*SERVICES, "gateway"):
        block = rendered.values.get(component, {})
        deployment = rendered.deployment(component)
        name = deployment["metadata"]["name"]
        if block.get("autoscaling", {}).get("enabled"):
            assert "replicas" not in deployment["spec"], name
            assert scaled[name]["spec"]["maxReplicas"] >= scaled[name]["spec"]["minReplicas"]
            assert scaled[name]["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        else:
            assert name not in scaled and deployment["spec"]["replicas"] >= 1, name
        pdb = rendered.one("PodDisruptionBudget", name)
        assert (
            pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        )
    if "autoscaling" in rendered.values:
        assert len(scaled) == 7
        memory = scaled[f"{RELEASE}-recofleet-retrieval"]["spec"]["metrics"][1]["resource"]
        assert memory == {
            "name": "memory",
            "target": {"type": "Utilization", "averageUtilization": 80},
        }


def _from_components(peers: list[dict[str, Any]]) -> set[str]:
    return {peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in peers}


def _dialled(egress: list[dict[str, Any]]) -> set[str]:
    """The components an egress policy lets a pod call."""
    return {
        component
        for rule in egress
        if any("podSelector" in peer for peer in rule.get("to", []))
        for component in _from_components(rule["to"])
    }


def test_network_policies_let_only_callers_in_and_pods_out_to_their_backends(
    rendered: Rendered,
) -> None:
    policies = {doc["metadata"]["name"]: doc for doc in rendered.kind("NetworkPolicy")}
    assert len(policies) == 8
    for service in SERVICES:
        policy = policies[f"{RELEASE}-recofleet-{service}"]["spec"]
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        grpc, metrics = policy["ingress"]
        assert _from_components(grpc["from"]) == CALLERS[service], service
        port = rendered.values.get(service, {}).get("port", SERVICE_PORTS[service])
        assert grpc["ports"] == [{"port": port, "protocol": "TCP"}]
        assert metrics["ports"][0]["port"] == grpc["ports"][0]["port"] + 100
    for policy in policies.values():
        for rule in policy["spec"]["egress"]:
            # No rule opens every port: each names what it allows.
            assert rule["ports"], policy["metadata"]["name"]
    campaigns = policies[f"{RELEASE}-recofleet-campaigns"]["spec"]["egress"]
    assert _dialled(campaigns) == {"profiles", "analytics"}
    assert _dialled(policies[f"{RELEASE}-recofleet-gateway"]["spec"]["egress"]) == set(SERVICES)
    for service in ("ingestion", "profiles", "retrieval", "ranking", "analytics"):
        assert _dialled(policies[f"{RELEASE}-recofleet-{service}"]["spec"]["egress"]) == set()
    kafka_ports = {
        int(server.rsplit(":", 1)[1])
        for server in rendered.values["kafka"]["bootstrapServers"].split(",")
    }
    ingestion = policies[f"{RELEASE}-recofleet-ingestion"]["spec"]["egress"]
    assert {p["port"] for p in ingestion[1]["ports"]} == kafka_ports
    retrieval = policies[f"{RELEASE}-recofleet-retrieval"]["spec"]["egress"]
    endpoint = rendered.values["modelStore"]["s3"].get("endpoint")
    assert retrieval[3]["ports"] == [{"port": 9000 if endpoint else 443, "protocol": "TCP"}]


def test_notes_tell_how_to_reach_the_gateway_and_get_the_admin_key(rendered: Rendered) -> None:
    secret = rendered.values.get("gateway", {}).get("adminKeySecret")
    if secret:
        assert f"kubectl get secret -n {NAMESPACE} {secret}" in rendered.notes
        assert "admin-key" in rendered.notes
    else:
        assert "recofleet keys create --scope admin" in rendered.notes
    if rendered.values.get("ingress", {}).get("enabled"):
        assert "https://reco.example.com/healthz" in rendered.notes
    else:
        assert f"{RELEASE}-recofleet-gateway" in rendered.notes


# The Prometheus Operator objects.


METRIC_DEFINITION = re.compile(
    r"(?:Counter|Gauge|Histogram|Summary|MetricFamily)\(\s*\"(recofleet_\w+)\""
)


def _metric_definitions() -> set[str]:
    """Names of the prometheus_client metrics defined in services/."""
    names = set()
    for path in (ROOT / "services").rglob("*.py"):
        source = path.read_text()
        names.update(METRIC_DEFINITION.findall(source))
    return names


def test_alerts_use_metrics_the_services_define(chart: helm.Chart) -> None:
    rendered = Rendered({}, render(chart, COMBINATIONS["everything"]))
    (rule,) = rendered.kind("PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    wanted = ("ConsumerLag", "GrpcErrors", "GatewayErrors", "DegradedAnswers", "NoModel")
    assert {f"Recofleet{name}" for name in wanted} <= set(alerts)
    defined = _metric_definitions()
    assert "recofleet_gateway_degraded_total" in defined
    for name, alert in alerts.items():
        expr = alert["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), name
        assert f'namespace="{NAMESPACE}"' in expr, name
        for metric in re.findall(r"\b(recofleet_\w+)", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert metric in defined or base in defined, f"{name}: {metric} is not defined"
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["summary"] and re.fullmatch(r"\d+[smh]", alert["for"])
    (monitor,) = rendered.kind("ServiceMonitor")
    selected = monitor["spec"]["selector"]["matchLabels"].items()
    scraped = [s for s in rendered.kind("Service") if selected <= s["metadata"]["labels"].items()]
    assert len(scraped) == 7
    ports = {port["name"] for service in scraped for port in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics", "http"} <= ports


# Whole installs.


def test_documented_install_renders_valid_manifests(chart: helm.Chart) -> None:
    release, namespace, values = documented_install()
    for expression in MINIMUM_SET:
        key = expression.split("=", 1)[0].split(".")
        node: Any = values
        for part in key:
            node = node[part]
        assert node, f"docs/deploy.md's install leaves {'.'.join(key)} empty"
    docs = documents(render(chart, values, name=release, namespace=namespace))
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "Ingress", "CronJob", "Job", "NetworkPolicy"} <= kinds
    assert kinds >= CUSTOM_KINDS
    for doc in docs:
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    for doc in docs:
        if doc["kind"] == "CronJob":
            assert doc["metadata"]["name"] in (f"{release}-train", f"{release}-train-ranker")


def test_long_release_names_stay_within_kubernetes_limits(chart: helm.Chart) -> None:
    name = "a-very-long-release-name-for-a-shop-in-production-01"
    docs = documents(render(chart, minimum(), name=name))
    for doc in docs:
        limit = 52 if doc["kind"] == "CronJob" else 63
        assert len(doc["metadata"]["name"]) <= limit, doc["metadata"]["name"]
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_commands_name_modules_and_cli_commands_that_exist(
    chart: helm.Chart, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.cli import main

    def cli_help(*words: str) -> str:
        with pytest.raises(SystemExit) as helped:
            main([*words, "--help"])
        assert helped.value.code == 0, f"recofleet {' '.join(words)} does not exist"
        return capsys.readouterr().out

    rendered = Rendered({}, render(chart, minimum()))
    for name, pod in rendered.pods():
        (container,) = pod["containers"]
        command = container["command"]
        assert command[0] == "python", name
        if command[1] == "-c":
            continue
        module = command[2]
        assert runnable(module), f"{name}: python -m {module} has nothing to run"
        if module == "services.cli":
            cli_help(command[3])
    # What NOTES.txt tells to run in the gateway's pod.
    usage = re.search(r"recofleet (keys create [^\n]+)", rendered.notes)
    assert usage is not None
    options = re.findall(r"--[a-z-]+", usage.group(1))
    assert options and all(option in cli_help("keys", "create") for option in options)


def test_migrations_job_upgrades_every_store_on_postgresql(chart: helm.Chart) -> None:
    """The hook's own script, with the environment it renders, on a real PostgreSQL: every
    schema is made and brought to the head, and a second run (the next upgrade) is a no-op."""
    prefix = f"chart_{uuid.uuid4().hex[:8]}_"
    rendered = Rendered({}, render(chart, minimum(f"postgresql.schemaPrefix={prefix}")))
    job = rendered.one("Job", f"{RELEASE}-recofleet-migrations")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}
    for entry in container["env"]:
        value = POSTGRES_URL if "valueFrom" in entry else entry["value"]
        env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)
    admin = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 5})
    try:
        for attempt in ("install", "upgrade"):
            done = subprocess.run(
                [sys.executable, *container["command"][1:]],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, f"{attempt}: {done.stderr[-2000:]}"
            printed = dict(line.split(": ", 1) for line in done.stdout.splitlines())
            assert printed == {s: migrations.head(s) for s in migrations.SERVICES}, attempt
        with admin.connect() as conn:
            for store in migrations.SERVICES:
                version = conn.execute(
                    text(f'SELECT version_num FROM "{prefix}{store}".alembic_version_{store}')
                ).scalar()
                assert version == migrations.head(store)
    finally:
        with admin.begin() as conn:
            for store in migrations.SERVICES:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{prefix}{store}" CASCADE'))
        admin.dispose()
