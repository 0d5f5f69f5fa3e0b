"""deploy/k8s: every overlay (serving, and its training kustomization) built with `kubectl kustomize`, every
object validated in strict mode with kubernetes-validate (unknown fields are errors) against the oldest and
the newest Kubernetes versions the manifests target, and the deployment's promises read from the rendered
objects."""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from charrnn.settings import add_flags, build, settings_of
from service.config import ServerConfig
from service.http.routes import HEALTH
from tests.deploy.tools import K8S, KUBECTL, REPO, kustomize

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl not on PATH: cannot run kustomize")

OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
# Each environment's training run: its own kustomization, applied on purpose, never by the serving one.
TRAINING = "training"
COMPONENTS = sorted(p.name for p in (K8S / "components").iterdir() if (p / "kustomization.yaml").exists())
# Native gRPC probes are GA since 1.27 and the preStop sleep action is on by default since 1.30.
MIN_VERSION = "1.30.0"
VERSIONS = (MIN_VERSION, kubernetes_validate.latest_version() + ".0")
# Custom resources kubernetes-validate has no schema for, with the fields this repo relies on.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"): ("selector", "endpoints")}


def validate_all(objects: list[dict[str, Any]]) -> list[str]:
    """Validate every object strictly for every version; returns 'Kind/name: vX.Y' lines."""
    lines = []
    for obj in objects:
        ident = f"{obj['kind']}/{obj['metadata']['name']}"
        crd = CRDS.get((obj["apiVersion"], obj["kind"]))
        if crd is not None:
            assert all(field in obj["spec"] for field in crd), f"{ident}: missing one of {crd}"
            lines.append(f"{ident}: custom resource, fields {', '.join(crd)} present")
            continue
        checked = [kubernetes_validate.validate(obj, version, strict=True) for version in VERSIONS]
        lines.append(f"{ident}: valid (strict) for {', '.join(checked)}")
    return lines


def find(objects: list[dict[str, Any]], kind: str, name_prefix: str = "charrnn") -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_templates(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """('Kind/name', pod spec) for every object that makes pods (Deployment, Job, ...)."""
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in objects
        if "template" in o.get("spec", {})
    ]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(K8S / "overlays" / request.param)


@pytest.fixture(scope="module", params=OVERLAYS)
def training(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """(environment, its training objects, its serving objects)."""
    name = request.param
    return name, kustomize(K8S / "overlays" / name / TRAINING), kustomize(K8S / "overlays" / name)


def test_there_are_dev_and_prod_overlays() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


def test_every_overlay_validates_strictly(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    lines = validate_all(objects)
    kinds = {o["kind"] for o in objects}
    expected = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap",
                "NetworkPolicy", "PersistentVolumeClaim", "ServiceAccount", "Namespace"}  # fmt: skip
    assert expected <= kinds, expected - kinds
    assert len(lines) == len(objects)
    assert all(o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"), name


def test_every_training_overlay_validates_strictly(
    training: tuple[str, list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    name, objects, serving = training
    assert len(validate_all(objects)) == len(objects)
    assert sorted(o["kind"] for o in objects) == ["Job", "NetworkPolicy"], name
    (namespace,) = [o["metadata"]["name"] for o in serving if o["kind"] == "Namespace"]
    assert {o["metadata"].get("namespace") for o in objects} == {namespace}, "trains where the server runs"


def with_components(root: Path, resource: Path, components: list[str]) -> list[dict[str, Any]]:
    """The objects of `resource` (a kustomization directory) with deploy/k8s/components/<name> added, rendered
    through a kustomization written in `root`."""
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(resource, root)],  # kustomize wants relative roots
        "components": [os.path.relpath(K8S / "components" / c, root) for c in components],
    }
    (root / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
    return kustomize(root)


def test_all_components_together_validate(tmp_path: Path) -> None:
    objects = with_components(tmp_path, K8S / "base", COMPONENTS)
    validate_all(objects)
    assert find(objects, "ServiceMonitor")
    assert_autoscaler_owns_replicas(objects)
    assert all(pod.get("enableServiceLinks") is False for _, pod in pod_templates(objects))
    volumes = one(objects, "Deployment", "charrnn")["spec"]["template"]["spec"]["volumes"]
    (artifacts,) = [v for v in volumes if v["name"] == "artifacts"]
    assert artifacts["persistentVolumeClaim"] == {"claimName": "charrnn-artifacts", "readOnly": True}


def test_the_ingress_example_streams_events_to_the_http_port(tmp_path: Path) -> None:
    """components/http-ingress: ingress-nginx routes every path to the Service's HTTP port (the one the server
    listens on) and passes server-sent events on unbuffered."""
    objects = with_components(tmp_path, K8S / "base", ["http-ingress"])
    validate_all(objects)
    ingress = one(objects, "Ingress", "charrnn")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    # nginx drops a stream that sends nothing for this long; its default (60 s) is raised, not lowered.
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 60
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] in ingress["spec"]["tls"][0]["hosts"]
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix"), "the API, /health and the playground"
    backend = path["backend"]["service"]
    service = one(objects, "Service", backend["name"])
    assert service["metadata"].get("namespace") == ingress["metadata"].get("namespace")
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"]]
    pod = one(objects, "Deployment", "charrnn")["spec"]["template"]["spec"]
    (server,) = [c for c in pod["containers"] if c["name"] == "server"]
    container_ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert container_ports[port["targetPort"]] == int(_config(objects)["CHARRNN_HTTP_PORT"])


def test_strict_validation_catches_a_bad_manifest() -> None:
    deployment = one(kustomize(K8S / "overlays" / "dev"), "Deployment", "charrnn")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 30  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(monitor, VERSIONS[-1], strict=True)


def serve_config(environ: dict[str, str]) -> ServerConfig:
    """What `charrnn serve` with no flags makes of `environ` (charrnn.settings, as the CLI does)."""
    parser = argparse.ArgumentParser()
    add_flags(parser, ServerConfig)
    return build(ServerConfig, parser.parse_args([]), environ)


def assert_autoscaler_owns_replicas(objects: list[dict[str, Any]]) -> None:
    """A Deployment an HPA scales has no `spec.replicas`: `kubectl apply` would reset the HPA's count to it."""
    targets = [h["spec"]["scaleTargetRef"] for h in objects if h["kind"] == "HorizontalPodAutoscaler"]
    assert targets, "no HorizontalPodAutoscaler"
    for ref in targets:
        scaled = one(objects, ref["kind"], ref["name"])
        assert "replicas" not in scaled["spec"], f"{ref['kind']}/{ref['name']} sets replicas next to its HPA"


def _config(objects: list[dict[str, Any]]) -> dict[str, str]:
    (config,) = find(objects, "ConfigMap", "charrnn-config")
    return dict(config["data"])


def test_deployment_promises(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    deployment = one(objects, "Deployment", "charrnn")
    pod = deployment["spec"]["template"]["spec"]
    (server,) = [c for c in pod["containers"] if c["name"] == "server"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    config = _config(objects)
    assert int(config["CHARRNN_PORT"]) == ports["grpc"] and int(config["CHARRNN_METRICS_PORT"]) == ports["metrics"]
    assert int(config["CHARRNN_HTTP_PORT"]) == ports["http"]
    assert config["CHARRNN_HOST"] == "0.0.0.0"
    # Every variable the ConfigMap sets is a `charrnn serve` setting, and the server reads them as meant.
    known = {env for s in settings_of(ServerConfig) for env in s.envs}
    assert set(config) <= known, f"{name}: not serve settings: {sorted(set(config) - known)}"
    served = serve_config({**config, "CHARRNN_HMAC_KEY_FILE": "/etc/charrnn/hmac/hmac-key"})
    assert (served.port, served.metrics_port, served.host) == (ports["grpc"], ports["metrics"], "0.0.0.0")
    assert served.http_port == ports["http"]
    # Start-up and liveness: native gRPC probes on the health service's port. Readiness: the HTTP face's
    # health route, so a pod is ready only when both listeners answer.
    for probe in ("startupProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == ports["grpc"], probe
    ready = server["readinessProbe"]["httpGet"]
    assert ready["path"] == HEALTH and ready["port"] == "http" and ready.get("scheme", "HTTP") == "HTTP"
    # Requests and limits; ORT threads are the CPU limit (rounded up) and the limit is whole cores.
    resources = server["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
    limit = cpu_cores(str(resources["limits"]["cpu"]))
    assert limit == math.ceil(limit), f"{name}: CPU limit {limit} is not whole cores; workers would round up"
    env = {e["name"]: e for e in server["env"]}
    workers = env["CHARRNN_ENGINES"]["valueFrom"]["resourceFieldRef"]
    assert workers == {"containerName": "server", "resource": "limits.cpu", "divisor": "1"}
    assert "CHARRNN_ENGINES" not in config and "CHARRNN_INTRA_OP_THREADS" not in config
    # Hardened: non-root, read-only root, no capabilities, RuntimeDefault seccomp, writable /tmp only.
    sc = server["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert mounts["tmp"]["mountPath"] == "/tmp" and set(mounts) == {"tmp", "hmac"}
    assert mounts["hmac"]["readOnly"] is True
    # Graceful termination: preStop sleep, then the drain, inside the grace period.
    pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(config["CHARRNN_GRACE"])
    assert pre_stop > 0 and pod["terminationGracePeriodSeconds"] > pre_stop + drain
    # The HMAC key is a Secret mounted read-only as a file (CHARRNN_HMAC_KEY_FILE), never a literal or an env var.
    assert "CHARRNN_HMAC_KEY" not in env and "CHARRNN_HMAC_KEY" not in config
    volume = {v["name"]: v for v in pod["volumes"]}["hmac"]["secret"]
    key_file = Path(mounts["hmac"]["mountPath"]) / next(i["path"] for i in volume["items"] if i["key"] == "hmac-key")
    assert env["CHARRNN_HMAC_KEY_FILE"]["value"] == str(key_file)
    secrets = find(objects, "Secret", "charrnn-hmac")
    if name == "prod":
        assert not secrets and volume["secretName"] == "charrnn-hmac", "prod must use an out-of-band Secret"
    else:
        assert [s["metadata"]["name"] for s in secrets] == [volume["secretName"]]


def test_services_hpa_pdb_and_policy_select_the_server(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    deployment = one(objects, "Deployment", "charrnn")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    cluster_ip, headless = one(objects, "Service", "charrnn"), one(objects, "Service", "charrnn-headless")
    assert cluster_ip["spec"].get("type", "ClusterIP") == "ClusterIP" and headless["spec"]["clusterIP"] == "None"
    ports = {p["name"]: p for p in cluster_ip["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c" and ports["metrics"]["appProtocol"] == "http"
    assert ports["http"]["appProtocol"] == "http" and ports["http"]["targetPort"] == "http"
    assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]
    for service in (cluster_ip, headless):
        assert selects(service["spec"]["selector"], labels)
    pdb = one(objects, "PodDisruptionBudget", "charrnn")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    policy = one(objects, "NetworkPolicy", "charrnn")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], labels)
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {"grpc", "metrics", "http"} and policy["spec"]["egress"] == []
    (public,) = [rule for rule in policy["spec"]["ingress"] if {p["port"] for p in rule["ports"]} >= {"http"}]
    assert public["from"] == [{"namespaceSelector": {}}], "an ingress controller in any namespace reaches HTTP"
    hpa = one(objects, "HorizontalPodAutoscaler", "charrnn")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "charrnn"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    if name == "prod":
        pods_metric = metrics["Pods"]["pods"]["metric"]["name"]
        # The metric the server really exports (service/metrics.py), and what the adapter rule serves.
        assert re.search(rf'Gauge\(\s*"{pods_metric}"', (REPO / "service" / "metrics.py").read_text(encoding="utf-8"))
        rules = yaml.safe_load((K8S / "components" / "live-streams-hpa" / "prometheus-adapter-rules.yaml").read_text())
        assert [r["name"]["as"] for r in rules["rules"]] == [pods_metric]
        assert find(objects, "ServiceMonitor")[0]["spec"]["endpoints"][0]["port"] == "metrics"


def test_the_autoscaler_alone_sets_the_replica_count(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    assert_autoscaler_owns_replicas(objects)


def test_no_pod_takes_service_links(
    training: tuple[str, list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    """Kubernetes injects CHARRNN_PORT=tcp://IP:50051 and more for the Service `charrnn` unless a pod opts
    out; they share the settings' prefix (tests/test_settings.py: charrnn reads only its own flags')."""
    name, trainer, serving = training
    pods = pod_templates(trainer + serving)
    assert {ident.split("/")[0] for ident, _ in pods} == {"Deployment", "Job"}, name
    for ident, pod in pods:
        assert pod.get("enableServiceLinks") is False, f"{name}: {ident} takes service links"


def test_serving_never_touches_a_training_run(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """Re-applying the serving overlay must not create, suspend or restart a training Job."""
    name, objects = overlay
    assert not [o for o in objects if o["kind"] in ("Job", "CronJob")], name
    images = [c["image"] for _, pod in pod_templates(objects) for c in pod["containers"]]
    assert not [i for i in images if "charrnn-train" in i], name


def test_training_job_runs_when_applied_and_writes_to_the_claim(
    training: tuple[str, list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    name, objects, serving = training
    job = one(objects, "Job", "charrnn-train")
    # Applied on purpose, it runs; applied again (unchanged spec), it keeps running: nothing suspends it.
    assert not job["spec"].get("suspend", False), "the training Job must not be suspended"
    pod = job["spec"]["template"]["spec"]
    (trainer,) = pod["containers"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    one(serving, "PersistentVolumeClaim", claims["artifacts"])  # the serving overlay creates the claim
    mounts = {m["name"]: m["mountPath"] for m in trainer["volumeMounts"]}
    export = trainer["args"][trainer["args"].index("--export") + 1]
    out = trainer["args"][trainer["args"].index("--out") + 1]
    assert trainer["args"][0] == "train" and export.startswith(mounts["artifacts"] + "/")
    assert out.startswith(mounts["artifacts"] + "/"), "checkpoints must land on the claim, not in the pod"
    assert trainer["securityContext"]["readOnlyRootFilesystem"] is True and mounts["tmp"] == "/tmp"
    # The trainer's image is the serving image's release (same tag), and its arguments are ones
    # `charrnn train` accepts (dev's overlay patches one by index, guarded by a JSON-patch test op).
    image, tag = trainer["image"].rsplit(":", 1)
    (server,) = one(serving, "Deployment", "charrnn")["spec"]["template"]["spec"]["containers"]
    assert image.split("/")[-1] == "charrnn-train" and tag == server["image"].rsplit(":", 1)[1], name
    from training.cli import register
    from training.config import TrainingConfig, apply_overrides

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(trainer["args"])
    config = apply_overrides(TrainingConfig(), args.overrides)
    assert config.optim.max_minutes == {"dev": 10, "prod": 60}[name]  # dev's patch changed its own argument
    policy = one(objects, "NetworkPolicy", "charrnn-train")
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["spec"]["podSelector"]["matchLabels"], labels)
    assert policy["spec"]["ingress"] == [] and policy["spec"]["egress"] == []


# ---------------------------------------------------------------------------------------------------------
# Distributed training (deploy/k8s/distributed-training, optional component distributed-gpu)

DISTRIBUTED = K8S / "distributed-training"


def _flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def distributed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[dict[str, Any]]]:
    if request.param == "cpu":
        return "cpu", kustomize(DISTRIBUTED)
    return "gpu", with_components(tmp_path_factory.mktemp("distributed-gpu"), DISTRIBUTED, ["distributed-gpu"])


def test_distributed_training_validates_strictly(distributed: tuple[str, list[dict[str, Any]]]) -> None:
    _, distributed = distributed
    lines = validate_all(distributed)
    assert {o["kind"] for o in distributed} == {"Job", "Service", "PersistentVolumeClaim", "NetworkPolicy"}
    assert len(lines) == len(distributed)


def test_distributed_training_is_torchrun_in_an_indexed_job(distributed: tuple[str, list[dict[str, Any]]]) -> None:
    device, distributed = distributed
    job = one(distributed, "Job", "charrnn-train-dist")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert "suspend" not in spec or spec["suspend"] is False, "applying it starts the run"
    assert spec["completionMode"] == "Indexed" and spec["backoffLimit"] == 0
    (trainer,) = pod["containers"]
    args = trainer["args"]
    assert trainer["command"] == ["torchrun"]
    assert int(_flag(args, "nnodes")) == spec["completions"] == spec["parallelism"], "one pod per node"
    assert _flag(args, "rdzv-backend") == "c10d" and _flag(args, "max-restarts") == "0"
    assert args[args.index("--no-python") + 1 : args.index("--no-python") + 3] == ["charrnn", "train"]
    # The rendezvous endpoint is pod 0's stable name under the headless Service, on the port it exposes.
    service = one(distributed, "Service", pod["subdomain"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert selects(service["spec"]["selector"], job["spec"]["template"]["metadata"]["labels"])
    host, port = _flag(args, "rdzv-endpoint").rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    (service_port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in trainer["ports"]}
    assert int(port) == service_port["port"] == container_ports[service_port["targetPort"]]
    assert pod["enableServiceLinks"] is False and pod["automountServiceAccountToken"] is False
    # Torch threads are the CPU limit; rank 0 writes to a claim every pod can mount.
    threads = [a for a in args if a.startswith("run.threads=")]
    assert threads == [f"run.threads={math.ceil(cpu_cores(str(trainer['resources']['limits']['cpu'])))}"]
    mounts = {m["name"]: m["mountPath"] for m in trainer["volumeMounts"]}
    assert _flag(args, "out").startswith(mounts["shared"] + "/") and _flag(args, "export").startswith(mounts["shared"])
    claim = {v["name"]: v for v in pod["volumes"]}["shared"]["persistentVolumeClaim"]["claimName"]
    assert one(distributed, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    assert trainer["securityContext"]["readOnlyRootFilesystem"] is True and mounts["tmp"] == "/tmp"
    policy = one(distributed, "NetworkPolicy", "charrnn-train-dist")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], job["spec"]["template"]["metadata"]["labels"])
    gpus = trainer["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") == ("run.device=cuda" in args) == (device == "gpu"), "GPUs and CUDA training come together"
