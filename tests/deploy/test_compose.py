"""deploy/compose.yaml: Redis durable and never evicting, ports and addresses that agree, N CPU workers,
a GPU profile with one GPU per worker, the token from the operator's environment, images of this version."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest

from tests.deploy import manifests
from tests.deploy.manifests import ROOT, compose_env, quantity_bytes

@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return manifests.compose(manifests.OPERATOR_ENV)["services"]


def role(service: dict[str, Any]) -> str:
    command = service.get("command") or manifests.image_cmd(manifests.image_dockerfile(service.get("image")))
    return manifests.role_of(command)


def by_role(services: dict[str, Any], wanted: str) -> dict[str, Any]:
    return {name: s for name, s in services.items() if role(s) == wanted}


def host_port(address: str) -> tuple[str, int]:
    match = re.fullmatch(r"(?:redis://)?([\w.-]+):(\d+)(?:/\d+)?", address)
    assert match, address
    return match.group(1), int(match.group(2))


def test_redis_keeps_an_append_only_file_on_a_volume_and_never_evicts(services: dict[str, Any]) -> None:
    (name, redis), = by_role(services, "redis").items()
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    volume = redis["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in manifests.compose(manifests.OPERATOR_ENV)["volumes"], "AOF lives in /data"
    assert redis["image"].split(":")[1].split(".")[0] == "7"


def test_the_service_port_agrees_with_its_settings_probe_and_workers(services: dict[str, Any]) -> None:
    (name, service), = by_role(services, "service").items()
    env = {**manifests.image_dockerfile(service["image"]).runtime.env(), **compose_env(service)}
    port = int(env["KERNELSCOPE_PORT"])
    published = [p.rsplit(":", 1)[1] for p in service["ports"]]
    assert str(port) in published
    assert env["KERNELSCOPE_METRICS_PORT"] in published, "/metrics is published beside gRPC"
    assert service["healthcheck"]["test"][1:] == ["python", "-m", "deploy.probe"]  # probes $KERNELSCOPE_PORT
    assert service["volumes"][0].split(":")[1] == env["KERNELSCOPE_DATA_DIR"]
    for worker_name, worker in by_role(services, "worker").items():
        assert host_port(compose_env(worker)["KERNELSCOPE_SERVICE"]) == (name, port), worker_name
        assert worker["depends_on"][name]["condition"] == "service_healthy", worker_name


def test_everyone_finds_redis_and_uses_one_queue(services: dict[str, Any]) -> None:
    (redis_name, _), = by_role(services, "redis").items()
    users = {**by_role(services, "service"), **by_role(services, "worker")}
    assert len(users) >= 3
    queues = set()
    for name, service in users.items():
        env = compose_env(service)
        assert host_port(env["REDIS_URL"]) == (redis_name, 6379), name
        queues.add(env.get("KERNELSCOPE_QUEUE"))
    assert len(queues) == 1, f"service and workers on different queues: {queues}"


def test_cpu_workers_scale_by_replicas(services: dict[str, Any]) -> None:
    cpu = {n: s for n, s in by_role(services, "worker").items() if "gpu" not in (s.get("profiles") or [])}
    (name, worker), = cpu.items()
    assert compose_env(worker)["KERNELSCOPE_DEVICE"] == "cpu"
    assert int(worker["deploy"]["replicas"]) == 2  # the default
    scaled = manifests.compose({**manifests.OPERATOR_ENV, "KERNELSCOPE_CPU_WORKERS": "5"})["services"][name]
    assert int(scaled["deploy"]["replicas"]) == 5
    assert "build" in worker and worker["build"]["dockerfile"].endswith("Dockerfile.worker-cpu")


def test_gpu_workers_are_a_profile_with_one_distinct_gpu_each(services: dict[str, Any]) -> None:
    gpu = {n: s for n, s in by_role(services, "worker").items() if "gpu" in (s.get("profiles") or [])}
    assert gpu
    seen: list[str] = []
    for name, worker in gpu.items():
        assert compose_env(worker)["KERNELSCOPE_DEVICE"].startswith("cuda"), name
        assert worker["build"]["dockerfile"].endswith("Dockerfile.worker-cuda"), name
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        assert len(device["device_ids"]) == 1, f"{name}: one worker per GPU"
        seen += device["device_ids"]
        assert "replicas" not in worker.get("deploy", {}), f"{name}: replicas would share its GPU"
    assert len(seen) == len(set(seen)), f"two GPU workers on one GPU: {seen}"


def test_workers_give_jobs_less_memory_than_their_container_limit(services: dict[str, Any]) -> None:
    for name, worker in by_role(services, "worker").items():
        limit = ((worker.get("deploy") or {}).get("resources") or {}).get("limits", {}).get("memory")
        job = compose_env(worker).get("KERNELSCOPE_JOB_MEMORY_BYTES")
        if limit and job:
            assert int(job) < quantity_bytes(limit), name


def test_the_token_is_required_from_the_operator() -> None:
    with pytest.raises(KeyError, match="KERNELSCOPE_WORKER_TOKEN"):
        manifests.compose({})
    raw = manifests.compose_raw()["services"]
    for name, service in raw.items():
        value = compose_env(service).get("KERNELSCOPE_WORKER_TOKEN")
        if value is not None:
            assert re.fullmatch(r"\$\{KERNELSCOPE_WORKER_TOKEN:\?[^}]+\}", value), name


def test_images_are_this_version_and_built_from_the_repository(services: dict[str, Any]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, service in services.items():
        if "build" in service:
            assert service["image"].endswith(f":{version}"), name
            assert (ROOT / "deploy" / service["build"]["context"]).resolve() == ROOT, name
            assert (ROOT / service["build"]["dockerfile"]).is_file(), name


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert manifests.interpolate("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} $$x $SET", env) == "v d d  $x v"
    with pytest.raises(KeyError, match="needed"):
        manifests.interpolate("${EMPTY:?needed}", env)
