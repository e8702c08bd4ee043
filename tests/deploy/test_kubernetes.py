"""deploy/k8s: both renders validate offline and are wired to each other, to the settings and to Vault.

Schemas: built-in kinds against the Kubernetes OpenAPI schemas bundled in ``kubernetes-validate``
(strict: unknown fields are errors); KEDA and Prometheus-operator kinds against the pydantic models that
``cloudcoil-models-*`` generate from those projects' CRD schemas, plus a round trip that refuses any field
the CRD does not define (the models themselves ignore extras).
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as prometheus
from pydantic import BaseModel

from tests.deploy.conftest import DEPLOY, K8S, RENDERS, kustomize
from worker.aggregator.settings import AggregatorSettings
from worker.broker.names import Topology
from worker.settings import Settings

Doc = dict[str, Any]
# The oldest Kubernetes minor still in common support, and the newest the wheel knows.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CRD_MODELS: dict[tuple[str, str], type[BaseModel]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): prometheus.ServiceMonitor,
}
SETUP_SH = (DEPLOY / "vault" / "setup.sh").read_text()


# ---------------------------------------------------------------- helpers

def objects(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_templates(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """Every pod the manifests run: the Deployments' and the topology Job's."""
    for workload in (*objects(docs, "Deployment"), *objects(docs, "Job")):
        yield workload, workload["spec"]["template"]


def configmap_env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The environment a container gets from its ConfigMaps (generated names resolved) and literal env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def crd_errors(doc: Doc) -> list[str]:
    """Validate a custom resource against its CRD model; report fields the CRD does not know."""
    model = CRD_MODELS[(doc["apiVersion"], doc["kind"])]
    parsed = model.model_validate(doc)  # raises on a wrong type or a missing required field
    back = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return list(_differences(doc, back, doc["kind"]))


def _differences(given: Any, kept: Any, path: str) -> Iterator[str]:
    if isinstance(given, dict) and isinstance(kept, dict):
        for key in given:
            if key not in kept:
                yield f"{path}.{key}: not a field of the CRD"
            else:
                yield from _differences(given[key], kept[key], f"{path}.{key}")
    elif isinstance(given, list) and isinstance(kept, list) and len(given) == len(kept):
        for i, (a, b) in enumerate(zip(given, kept, strict=True)):
            yield from _differences(a, b, f"{path}[{i}]")
    elif given != kept:
        yield f"{path}: {given!r} became {kept!r}"


# ---------------------------------------------------------------- rendering and schemas

@pytest.mark.parametrize("name", sorted(RENDERS))
def test_the_kustomization_renders_every_kind_the_deployment_needs(
    renders: dict[str, list[Doc]], name: str
) -> None:
    kinds = {d["kind"] for d in renders[name]}
    assert kinds >= {"Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                     "NetworkPolicy", "ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
    assert all(d["metadata"].get("namespace") == "byok" for d in renders[name] if d["kind"] != "Namespace")


def test_every_manifest_file_is_part_of_the_base() -> None:
    listed = set(re.findall(r"^\s+- (\S+\.yaml)$", (K8S / "base" / "kustomization.yaml").read_text(), re.M))
    on_disk = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == listed, f"not in resources: {on_disk - listed}; missing files: {listed - on_disk}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(RENDERS))
def test_built_in_objects_validate_against_the_kubernetes_schemas(
    renders: dict[str, list[Doc]], name: str, version: str
) -> None:
    checked = 0
    for doc in renders[name]:
        if (doc["apiVersion"], doc["kind"]) in CRD_MODELS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 14  # every built-in object of the deployment, none skipped


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_custom_resources_validate_against_their_crd_schemas(renders: dict[str, list[Doc]], name: str) -> None:
    custom = [d for d in renders[name] if (d["apiVersion"], d["kind"]) in CRD_MODELS]
    assert {d["kind"] for d in custom} == {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
    for doc in custom:
        assert crd_errors(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"


def test_the_validators_catch_mistakes(renders: dict[str, list[Doc]]) -> None:
    """The checks above can fail: a misspelt field, a wrong type, in a built-in kind and in a CRD."""
    docs = renders["base"]
    deployment = copy.deepcopy(one(docs, "Deployment", "byok-worker"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(one(docs, "Deployment", "byok-worker"))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9464"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)

    scaled = copy.deepcopy(one(docs, "ScaledObject", "byok-worker"))
    scaled["spec"]["minReplicas"] = 2
    assert crd_errors(scaled) == ["ScaledObject.spec.minReplicas: not a field of the CRD"]
    scaled = copy.deepcopy(one(docs, "ScaledObject", "byok-worker"))
    del scaled["spec"]["scaleTargetRef"]["name"]
    with pytest.raises(ValueError, match="name"):
        crd_errors(scaled)
    monitor = copy.deepcopy(one(docs, "ServiceMonitor", "byok-worker"))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    assert crd_errors(monitor) == ["ServiceMonitor.spec.endpoints[0].intervall: not a field of the CRD"]


# ---------------------------------------------------------------- the pods

@pytest.mark.parametrize("name", sorted(RENDERS))
def test_every_pod_is_hardened_and_bounded(renders: dict[str, list[Doc]], name: str) -> None:
    for deployment, template in pod_templates(renders[name]):
        pod = template["spec"]
        where = f"{name}: {deployment['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            resources = container["resources"]
            assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}, where
            image = container["image"]
            assert re.fullmatch(r"[a-z0-9./-]+/byok-worker:\d+\.\d+\.\d+", image), f"{where}: unpinned {image}"
            # The only writable paths are the volumes: /tmp, and the read-only token.
            mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
            assert all(read_only for path, read_only in mounts.items() if path != "/tmp"), where


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_worker_probes_serve_from_the_health_port(renders: dict[str, list[Doc]], name: str) -> None:
    docs = renders[name]
    container = one(docs, "Deployment", "byok-worker")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["worker"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9464}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    env = configmap_env(docs, container)
    # The health server must listen beyond loopback, on the port the probes use.
    assert env["BYOK_METRICS_LISTEN"] == "0.0.0.0:9464"


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_termination_grace_outlasts_the_drain(renders: dict[str, list[Doc]], name: str) -> None:
    docs = renders[name]
    pod = one(docs, "Deployment", "byok-worker")["spec"]["template"]["spec"]
    grace = float(configmap_env(docs, pod["containers"][0])["BYOK_SHUTDOWN_GRACE_S"])
    # In-flight jobs get the whole drain period, plus time to close the broker and Vault connections.
    assert pod["terminationGracePeriodSeconds"] >= grace + 10


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_every_byok_setting_is_real_and_valid(
    renders: dict[str, list[Doc]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt BYOK_ name is silently ignored by the settings (extra="ignore"): refuse it here."""
    known = {f"BYOK_{field.upper()}" for field in (*Settings.model_fields, *AggregatorSettings.model_fields)}
    for _, template in pod_templates(renders[name]):
        for container in template["spec"]["containers"]:
            env = configmap_env(renders[name], container)
            secret_env = {v["name"] for v in container.get("env", []) if "valueFrom" in v}
            assert set(env) | secret_env <= known, f"unknown settings: {(set(env) | secret_env) - known}"
            for key, value in env.items():
                monkeypatch.setenv(key, value)
            settings = Settings()  # raises on an invalid value
            AggregatorSettings()
            for key in env:
                monkeypatch.delenv(key)
            assert settings.topology_prefix == "byok"


# ---------------------------------------------------------------- wiring between objects

@pytest.mark.parametrize("name", sorted(RENDERS))
def test_services_monitors_budgets_and_policies_select_the_pods(renders: dict[str, list[Doc]], name: str) -> None:
    docs = renders[name]
    pods = {d["metadata"]["name"]: t for d, t in pod_templates(docs)}

    def pods_selected(selector: dict[str, str]) -> set[str]:
        return {n for n, t in pods.items() if selects(selector, t["metadata"]["labels"])}

    for deployment, template in pod_templates(docs):
        if deployment["kind"] == "Deployment":
            assert selects(deployment["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
    for service in objects(docs, "Service"):
        selected = pods_selected(service["spec"]["selector"])
        assert len(selected) == 1, service["metadata"]["name"]
        container_ports = {p["name"] for p in pods[selected.pop()]["spec"]["containers"][0]["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    for monitor in objects(docs, "ServiceMonitor"):
        services = [s for s in objects(docs, "Service")
                    if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert len(services) == 1, monitor["metadata"]["name"]
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in services[0]["spec"]["ports"]}
    for budget in objects(docs, "PodDisruptionBudget"):
        assert len(pods_selected(budget["spec"]["selector"]["matchLabels"])) == 1
    for policy in objects(docs, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        if policy["metadata"]["name"] == "default-deny":
            assert policy["spec"]["podSelector"] == {}
        else:
            assert len(pods_selected(selector)) == 1, policy["metadata"]["name"]


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_keda_scales_the_worker_on_the_jobs_and_overflow_queues(renders: dict[str, list[Doc]], name: str) -> None:
    docs = renders[name]
    scaled = one(docs, "ScaledObject", "byok-worker")
    target = scaled["spec"]["scaleTargetRef"]
    deployment = one(docs, target["kind"], target["name"])
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count: an apply must not reset it"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    names = Topology("byok")
    triggers = {t["name"]: t for t in scaled["spec"]["triggers"]}
    assert {n: t["metadata"]["queueName"] for n, t in triggers.items()} == {
        "jobs": names.jobs_queue, "overflow": names.overflow_queue,
    }
    # The depth that scales is the sum: a flood moved to the overflow queue counts as much as one in byok.jobs.
    modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
    assert modifiers["formula"] == "jobs + overflow" and modifiers["metricType"] == "AverageValue"
    prefetch = int(configmap_env(docs, deployment["spec"]["template"]["spec"]["containers"][0])["BYOK_PREFETCH"])
    assert 0 < int(modifiers["target"]) <= prefetch, "target per replica above the prefetch never scales out in time"
    for trigger in triggers.values():
        assert trigger["type"] == "rabbitmq"
        metadata = trigger["metadata"]
        assert metadata["mode"] == "QueueLength"
        # http: the management API's depth counts unacked (in-flight and held) jobs too, so busy workers are kept.
        assert metadata["protocol"] == "http" and metadata.get("excludeUnacknowledged", "false") == "false"
        assert "host" not in metadata, "credentials come from the TriggerAuthentication"
        auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert [(r["parameter"], r["name"]) for r in auth["spec"]["secretTargetRef"]] == [
            ("host", "byok-keda-rabbitmq")
        ]


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_the_worker_identity_matches_the_vault_kubernetes_role(renders: dict[str, list[Doc]], name: str) -> None:
    docs = renders[name]
    pod = one(docs, "Deployment", "byok-worker")["spec"]["template"]["spec"]
    env = configmap_env(docs, pod["containers"][0])
    assert env["BYOK_VAULT_AUTH"] == "kubernetes"
    assert env["BYOK_VAULT_K8S_ROLE"] == re.search(r"^role=([\w-]+)$", SETUP_SH, re.M)[1]
    assert env["BYOK_VAULT_K8S_MOUNT"] == re.search(r"k8s=\$\{BYOK_K8S_MOUNT:-(\S+)\}", SETUP_SH)[1]
    account = one(docs, "ServiceAccount", pod["serviceAccountName"])
    assert account["metadata"]["name"] == re.search(r"BYOK_K8S_SERVICE_ACCOUNT:-([\w-]+)", SETUP_SH)[1]
    assert account["metadata"]["namespace"] == re.search(r"BYOK_K8S_NAMESPACE:-([\w-]+)", SETUP_SH)[1]
    # The JWT the worker presents: a projected token with the audience the role requires, where it reads it.
    [volume] = [v for v in pod["volumes"] if "projected" in v]
    [source] = volume["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == re.search(r"BYOK_K8S_AUDIENCE:-([\w-]+)", SETUP_SH)[1]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert env["BYOK_VAULT_K8S_JWT_PATH"] == f"{mount['mountPath']}/{source['serviceAccountToken']['path']}"


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_the_worker_may_reach_only_dns_broker_vault_and_https(renders: dict[str, list[Doc]], name: str) -> None:
    docs = renders[name]
    one(docs, "NetworkPolicy", "default-deny")
    policy = one(docs, "NetworkPolicy", "byok-worker")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert ports == {53, 5672, 5671, 8200, 443}
    assert all(rule.get("to") for rule in policy["egress"]), "a rule without `to` allows every destination"
    [public] = [rule for rule in policy["egress"] if rule["ports"] == [{"port": 443, "protocol": "TCP"}]]
    for block in (peer["ipBlock"] for peer in public["to"]):
        excluded = [ipaddress.ip_network(c) for c in block["except"]]
        network = ipaddress.ip_network(block["cidr"])
        probes = ["10.1.2.3", "172.20.0.1", "192.168.1.1", "169.254.169.254"] if network.version == 4 else ["fd00::1"]
        for address in map(ipaddress.ip_address, probes):
            assert any(address in net for net in excluded), f"{address} is reachable on 443"
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == [9464]


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_aggregators_share_postgresql_when_there_are_several(renders: dict[str, list[Doc]], name: str) -> None:
    docs = renders[name]
    deployment = one(docs, "Deployment", "byok-aggregator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["aggregator"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert [p["containerPort"] for p in container["ports"]] == [8088]
    env = configmap_env(docs, container)
    from_secret = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container["env"] if "valueFrom" in v}
    if deployment["spec"].get("replicas", 1) > 1:
        assert "BYOK_STORE_URL" not in env or env["BYOK_STORE_URL"].startswith("postgresql://")
        assert "BYOK_STORE_URL" in from_secret or env.get("BYOK_STORE_URL", "").startswith("postgresql://"), (
            "several aggregators on the default SQLite file would each keep their own store"
        )
    assert env["BYOK_API_LISTEN"] == "0.0.0.0:8088"


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_every_secret_reference_is_documented(renders: dict[str, list[Doc]], name: str) -> None:
    table = set(re.findall(r"^\| `([\w-]+)` \| `([\w-]+)` \|", (K8S / "README.md").read_text(), re.M))
    referenced = set()
    for _, template in pod_templates(renders[name]):
        for container in template["spec"]["containers"]:
            referenced |= {(v["valueFrom"]["secretKeyRef"]["name"], v["valueFrom"]["secretKeyRef"]["key"])
                           for v in container.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})}
    for auth in objects(renders[name], "TriggerAuthentication"):
        referenced |= {(r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert referenced == table
    assert not objects(renders[name], "Secret"), "secrets do not belong in git"


def test_the_production_overlay_changes_what_it_says() -> None:
    base, production = kustomize(RENDERS["base"]), kustomize(RENDERS["production"])

    def worker_env(docs: list[Doc]) -> dict[str, str]:
        container = one(docs, "Deployment", "byok-worker")["spec"]["template"]["spec"]["containers"][0]
        return configmap_env(docs, container)

    assert worker_env(base)["BYOK_VAULT_ADDR"] != worker_env(production)["BYOK_VAULT_ADDR"]
    for docs in (base, production):  # the worker refuses plain http to Vault off loopback
        assert worker_env(docs)["BYOK_VAULT_ADDR"].startswith("https://")
        assert "BYOK_VAULT_ALLOW_PLAIN_HTTP" not in worker_env(docs)
    assert one(production, "Deployment", "byok-aggregator")["spec"]["replicas"] == 2
    vault_rule = one(production, "NetworkPolicy", "byok-worker")["spec"]["egress"][2]
    assert vault_rule["ports"][0]["port"] == 8200 and "ipBlock" in vault_rule["to"][0]


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_an_admin_job_declares_the_topology_and_the_worker_only_checks_it(
    renders: dict[str, list[Doc]], name: str
) -> None:
    """The worker's broker user needs no configure permission: the byok-topology Job declares, with the
    workers' prefix and delivery limit, under an identity of its own, and reaches only DNS and the broker."""
    docs = renders[name]
    worker = one(docs, "Deployment", "byok-worker")["spec"]["template"]["spec"]["containers"][0]
    job = one(docs, "Job", "byok-topology")["spec"]["template"]["spec"]
    container = job["containers"][0]
    assert container["args"] == ["topology", "declare"]
    assert configmap_env(docs, worker)["BYOK_DECLARE_TOPOLOGY"] == "false"
    assert container["envFrom"] == worker["envFrom"], "the same prefix and delivery limit as the workers"
    secret = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container["env"]}
    assert secret == {"BYOK_AMQP_URL": {"name": "byok-topology", "key": "amqp-url"}}
    assert job["serviceAccountName"] == "byok-topology" and job["restartPolicy"] == "OnFailure"
    policy = one(docs, "NetworkPolicy", "byok-topology")["spec"]
    assert {p["port"] for rule in policy["egress"] for p in rule["ports"]} == {53, 5672, 5671}
    assert policy["ingress"] == []
