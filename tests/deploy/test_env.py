"""Every environment variable the deployment files set is read by the code of the container it is set on,
has a value that code accepts, and no secret is ever written as a literal."""

from __future__ import annotations

import fnmatch
import re
import uuid

import pytest

from tests.deploy import manifests
from tests.deploy.manifests import THIRD_PARTY_ENV, Container, SecretRef, code_env_vars

# What compose needs from the operator's shell; anything else it reads has a default.
def unread_variables(container: Container) -> list[str]:
    """The variables `container` sets that neither its code nor a known third-party tool reads."""
    allowed = code_env_vars(container.role) | set(THIRD_PARTY_ENV)
    return sorted(set(container.env) - allowed)


@pytest.fixture(scope="module")
def containers() -> list[Container]:
    found = manifests.containers(manifests.OPERATOR_ENV)
    assert len(found) >= 7, [c.where for c in found]  # compose: 4 services, k8s: 3 workloads, 3 Dockerfiles
    return found


def test_env_reads_recognises_every_way_of_reading_a_variable() -> None:
    source = (
        "import os\n"
        "from os import environ, getenv\n"
        "a = os.environ.get('A', 'x')\n"
        "b = os.getenv('B')\n"
        "c = os.environ['C']\n"
        "d = environ.pop('D', None)\n"
        "if 'E' in os.environ:\n    pass\n"
        "f = getenv('F')\n"
        "os.environ['WRITTEN'] = '1'\n"
        "name = 'DYNAMIC'\n"
        "g = os.environ.get(name)\n"
    )
    assert manifests.env_reads(source) == {"A", "B", "C", "D", "E", "F"}


def test_the_code_reads_what_its_docs_say() -> None:
    # The discovery is not vacuous: the service reads its Config's variables, the worker its own set,
    # and each side reads something the other does not.
    service, worker = code_env_vars("service"), code_env_vars("worker")
    assert manifests.config_env_vars() <= service
    assert service - worker and worker - service
    assert manifests.worker_int_settings() <= worker


def test_every_container_has_a_known_role(containers: list[Container]) -> None:
    unknown = [(c.where, c.command) for c in containers if c.role == "unknown"]
    assert not unknown


def test_every_variable_set_is_one_the_code_reads(containers: list[Container]) -> None:
    problems = {c.where: unread_variables(c) for c in containers if unread_variables(c)}
    assert not problems, f"set but read by no code of that container: {problems}"


def test_the_check_catches_variables_no_code_reads() -> None:
    made_up = f"KERNELSCOPE_NOT_A_SETTING_{uuid.uuid4().hex[:8].upper()}"
    worker_only = sorted(code_env_vars("worker") - code_env_vars("service"))[0]
    service = Container(
        where="planted", image=None, dockerfile=None, command=["python", "-m", "service"],
        env={"REDIS_URL": "redis://r:6379/0", made_up: "1", worker_only: "x"},
    )
    assert unread_variables(service) == sorted([made_up, worker_only])


def test_service_settings_are_values_its_config_accepts(containers: list[Container]) -> None:
    from service.config import Config

    services = [c for c in containers if c.role == "service" and c.image]
    assert services
    for c in services:
        env = c.effective_env()
        config = Config.from_env(env)  # raises ValueError on a value it cannot parse
        assert config.redis_url, f"{c.where}: python -m service requires REDIS_URL"
        assert config.host == "0.0.0.0", f"{c.where}: in a container the service must bind every interface"
        assert config.worker_token == "s3cret", f"{c.where}: the worker token must reach the service"


def test_worker_settings_are_values_the_worker_accepts(containers: list[Container]) -> None:
    workers = [c for c in containers if c.role == "worker" and c.image]
    assert workers
    numeric = manifests.worker_int_settings()
    for c in workers:
        env = c.effective_env()
        for name in numeric & set(env):
            assert re.fullmatch(r"\d+", env[name]), f"{c.where}: {name}={env[name]!r} is read with int()"
        # workers/defaults.py: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1".
        assert re.fullmatch(r"auto|cpu|cuda(:\d+)?", env["KERNELSCOPE_DEVICE"]), c.where
        for name in ("REDIS_URL", "KERNELSCOPE_SERVICE", "KERNELSCOPE_WORKER_TOKEN"):
            assert env.get(name), f"{c.where}: a worker needs {name} (its default points at localhost)"


def test_secrets_are_never_written_as_literals(containers: list[Container]) -> None:
    from workers.limits import SECRET_PATTERNS

    secret_like = 0
    for c in containers:
        for name, value in c.env.items():
            # A *_FILE variable names a file (test_k8s checks the tokens file is mounted from a Secret).
            if any(fnmatch.fnmatchcase(name, p) for p in SECRET_PATTERNS) and not name.endswith("_FILE"):
                secret_like += 1
                assert isinstance(value, SecretRef), f"{c.where}: {name} is a literal; take it from a Secret"
    assert secret_like >= 5  # the token on compose's service and workers, and on both k8s workloads
