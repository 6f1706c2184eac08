"""deploy/k8s: well-formed, namespace-less manifests whose selectors, ports, probes, volumes, GPU requests
and Secret references agree with each other and with the images."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import manifests
from tests.deploy.manifests import K8S_DIR, ROOT, quantity_bytes

API_VERSIONS = {
    "ConfigMap": "v1", "Secret": "v1", "Service": "v1", "PersistentVolumeClaim": "v1",
    "Deployment": "apps/v1", "StatefulSet": "apps/v1", "NetworkPolicy": "networking.k8s.io/v1",
}
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return manifests.k8s_documents()


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    (found,) = find(docs, kind, name)
    return found


def container_env(container: Doc) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def workload_by_role(docs: list[Doc], role: str) -> list[tuple[Doc, Doc]]:
    found = []
    for workload in manifests.workloads(docs):
        for container in manifests.pod_containers(workload):
            if manifests.role_of(container.get("command")) == role:
                found.append((workload, container))
    return found


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def service_for(docs: list[Doc], workload: Doc) -> Doc:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    (service,) = [s for s in find(docs, "Service") if selects(s["spec"]["selector"], labels)]
    return service


def container_port(container: Doc, target: int | str) -> int:
    """The container port a Service's targetPort (a name or a number) resolves to."""
    for port in container.get("ports") or []:
        if target in (port.get("name"), port["containerPort"]):
            return int(port["containerPort"])
    raise AssertionError(f"targetPort {target!r} is no port of container {container['name']}")


def test_every_document_is_a_known_kind_with_its_api_version_and_no_namespace(docs: list[Doc]) -> None:
    assert len(docs) >= 8
    names = set()
    for doc in docs:
        assert API_VERSIONS.get(doc["kind"]) == doc["apiVersion"], doc["kind"]
        assert "namespace" not in doc["metadata"], f"{doc['kind']}/{doc['metadata']['name']} names a namespace"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in names, f"duplicate {key}"
        names.add(key)


def test_kustomization_lists_every_manifest(docs: list[Doc]) -> None:
    kustomization = manifests.kustomization()
    assert sorted(kustomization["resources"]) == sorted(p.name for p in manifests.k8s_files())
    assert "namespace" not in kustomization


def test_selectors_match_their_pod_templates_and_every_service_selects_a_workload(docs: list[Doc]) -> None:
    templates = []
    for workload in manifests.workloads(docs):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selects(workload["spec"]["selector"]["matchLabels"], labels), workload["metadata"]["name"]
        templates.append(labels)
    for service in find(docs, "Service"):
        matched = [t for t in templates if selects(service["spec"]["selector"], t)]
        assert len(matched) == 1, f"Service {service['metadata']['name']} selects {len(matched)} workloads"


def test_service_ports_agree_between_settings_container_probes_and_service(docs: list[Doc]) -> None:
    (workload, container), = workload_by_role(docs, "service")
    port = int(container_env(container)["KERNELSCOPE_PORT"])
    assert container_env(container)["KERNELSCOPE_HOST"] == "0.0.0.0"
    service = service_for(docs, workload)
    (service_port,) = [p for p in service["spec"]["ports"] if container_port(container, p["targetPort"]) == port]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]
        assert probe["grpc"]["port"] == port, f"{kind} must be a gRPC probe on the service's port"
    # Liveness must outlast a short Redis outage (health is NOT_SERVING then and a restart does not help).
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 60
    for worker_workload, worker in workload_by_role(docs, "worker"):
        target = container_env(worker)["KERNELSCOPE_SERVICE"]
        assert target == f"{service['metadata']['name']}:{service_port['port']}", worker_workload["metadata"]["name"]


def test_metrics_port_agrees_between_settings_container_annotations_and_service(docs: list[Doc]) -> None:
    (workload, container), = workload_by_role(docs, "service")
    port = int(container_env(container)["KERNELSCOPE_METRICS_PORT"])
    assert port != int(container_env(container)["KERNELSCOPE_PORT"])
    assert container_port(container, "metrics") == port
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == port
    (service_port,) = [p for p in service_for(docs, workload)["spec"]["ports"] if p["name"] == "metrics"]
    assert container_port(container, service_port["targetPort"]) == port


def test_api_tokens_file_is_mounted_from_the_generated_secret(docs: list[Doc]) -> None:
    (workload, container), = workload_by_role(docs, "service")
    path = Path(container_env(container)["KERNELSCOPE_TOKENS_FILE"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
    assert mount.get("readOnly") is True and "subPath" not in mount, "a subPath mount never sees Secret updates"
    (volume,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    generated = {g["name"]: g for g in manifests.kustomization()["secretGenerator"]}
    generator = generated[volume["secret"]["secretName"]]
    assert path.name in {f.split("=", 1)[0] for f in generator["files"]}
    # The service re-reads the file when it changes; a hashed name would restart the pod instead.
    assert generator["options"]["disableNameSuffixHash"] is True


def test_redis_is_durable_never_evicts_and_is_where_everyone_looks(docs: list[Doc]) -> None:
    (statefulset, container), = workload_by_role(docs, "redis")
    assert statefulset["kind"] == "StatefulSet" and statefulset["spec"]["replicas"] == 1
    config_path = container["command"][1]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    (config_volume,) = [n for n, path in mounts.items() if config_path.startswith(path + "/")]
    configmap = one(docs, "ConfigMap", volumes[config_volume]["configMap"]["name"])
    conf = dict(
        line.split(None, 1) for line in configmap["data"][Path(config_path).name].splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert conf["appendonly"] == "yes"
    assert conf["maxmemory-policy"] == "noeviction"
    assert quantity_bytes(conf["maxmemory"]) < quantity_bytes(container["resources"]["limits"]["memory"])
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    assert any(mounts.get(claim) == conf["dir"] for claim in claims), "the AOF directory must be on the PVC"
    port = int(conf["port"])
    assert container_port(container, "redis") == port
    service = service_for(docs, statefulset)
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    (service_port,) = service["spec"]["ports"]
    assert container_port(container, service_port["targetPort"]) == port
    expected = f"redis://{service['metadata']['name']}:{service_port['port']}/"
    users = workload_by_role(docs, "service") + workload_by_role(docs, "worker")
    assert len(users) == 2
    for workload, c in users:
        assert container_env(c)["REDIS_URL"].startswith(expected), workload["metadata"]["name"]


def test_redis_accepts_only_kernelscope_pods(docs: list[Doc]) -> None:
    (statefulset, _), = workload_by_role(docs, "redis")
    policy = one(docs, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], statefulset["spec"]["template"]["metadata"]["labels"])
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    clients = workload_by_role(docs, "service") + workload_by_role(docs, "worker")
    for workload, _c in clients:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        selector = peer["podSelector"]
        assert selects(selector.get("matchLabels", {}), labels)
        for expression in selector.get("matchExpressions", []):
            assert expression["operator"] == "In" and labels.get(expression["key"]) in expression["values"]


def test_the_blob_store_claim_allows_the_service_replica_count(docs: list[Doc]) -> None:
    (workload, container), = workload_by_role(docs, "service")
    pod = workload["spec"]["template"]["spec"]
    data_dir = container_env(container)["KERNELSCOPE_DATA_DIR"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == data_dir]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = one(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    if "ReadWriteMany" not in claim["spec"]["accessModes"]:
        assert workload["spec"]["replicas"] == 1, "replicas share the blob store: ReadWriteOnce allows one"
        assert workload["spec"]["strategy"]["type"] == "Recreate", "a rolling update would need two pods on it"


def test_gpu_workers_take_one_gpu_each(docs: list[Doc]) -> None:
    found = workload_by_role(docs, "worker")
    assert found
    for workload, container in found:
        name = workload["metadata"]["name"]
        assert workload["kind"] == "Deployment", name
        limits = container["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) == 1, f"{name}: one worker per GPU"
        assert container_env(container)["KERNELSCOPE_DEVICE"] in ("cuda", "cuda:0"), name
        assert int(container_env(container)["KERNELSCOPE_JOB_MEMORY_BYTES"]) < quantity_bytes(limits["memory"]), name
        assert workload["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0, f"{name}: a surge pod needs a spare GPU"
        assert manifests.image_dockerfile(container["image"]).path.name == "Dockerfile.worker-cuda", name
        cache = container_env(container).get("KERNELSCOPE_WORKER_CACHE")
        if cache:
            assert cache in {m["mountPath"] for m in container["volumeMounts"]}, f"{name}: cache on a volume"


def test_read_only_root_filesystems_have_a_writable_tmp(docs: list[Doc]) -> None:
    for workload in manifests.workloads(docs):
        for container in manifests.pod_containers(workload):
            if container.get("securityContext", {}).get("readOnlyRootFilesystem") and manifests.image_dockerfile(
                container["image"]
            ):
                assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, workload["metadata"]["name"]


def test_the_worker_token_comes_from_the_generated_secret(docs: list[Doc]) -> None:
    kustomization = manifests.kustomization()
    generated = {g["name"]: g for g in kustomization.get("secretGenerator", [])}
    # The key is whatever the documented command writes into the env file: `echo "token=..." > ...`.
    key = re.search(r'echo "(\w+)=', (K8S_DIR / "kustomization.yaml").read_text()).group(1)
    refs = 0
    for workload in manifests.workloads(docs):
        for container in manifests.pod_containers(workload):
            for item in container.get("env") or []:
                if item["name"] == "KERNELSCOPE_WORKER_TOKEN":
                    ref = item["valueFrom"]["secretKeyRef"]
                    assert ref["name"] in generated or find(docs, "Secret", ref["name"]), ref
                    assert ref["key"] == key
                    refs += 1
    assert refs == 2  # the service and the GPU workers
    assert not find(docs, "Secret"), "no Secret with a token in it is committed"
    for generator in generated.values():
        for env_file in generator.get("envs", []) + [f.split("=", 1)[-1] for f in generator.get("files", [])]:
            ignored = subprocess.run(
                ["git", "check-ignore", "-q", str(K8S_DIR / env_file)], cwd=ROOT, capture_output=True
            )
            assert ignored.returncode == 0, f"{env_file} holds the token: it must be git-ignored"


def test_images_are_this_version(docs: list[Doc]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for workload in manifests.workloads(docs):
        for container in manifests.pod_containers(workload):
            if manifests.image_dockerfile(container["image"]) is not None:
                assert container["image"].endswith(f":{version}"), container["image"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_and_points_every_reference_at_the_generated_secret(tmp_path: Path) -> None:
    work = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, work)
    (work / "worker-token.env").write_text("token=planted-token-for-the-test\n")
    (work / "api-tokens").write_text("alice:" + "ab" * 32 + "\n")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(work)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = list(yaml.safe_load_all(rendered))
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    (name,) = [n for n in secrets if n.startswith("kernelscope-worker-token")]
    secret = secrets[name]
    assert name.startswith("kernelscope-worker-token-")  # content-hashed: a new token rolls the pods
    refs = [
        item["valueFrom"]["secretKeyRef"]
        for d in docs if d["kind"] in manifests.WORKLOAD_KINDS
        for c in manifests.pod_containers(d)
        for item in c.get("env") or [] if "valueFrom" in item
    ]
    assert refs and all(r["name"] == name and r["key"] in secret["data"] for r in refs)
    mounted = [
        v["secret"]["secretName"]
        for d in docs if d["kind"] in manifests.WORKLOAD_KINDS
        for v in d["spec"]["template"]["spec"].get("volumes") or [] if "secret" in v
    ]
    assert mounted and all(m in secrets for m in mounted)
