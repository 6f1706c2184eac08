"""Every command the deployment files run exists: `python -m X` names an importable module with a main,
`kernelscope` is the project's console script, and redis commands run only in the redis image."""

from __future__ import annotations

import importlib
import importlib.util
import tomllib

import pytest

from tests.deploy import manifests
from tests.deploy.manifests import BUILD_STAGE, ROOT, Container

REDIS_COMMANDS = ("redis-server", "redis-cli")


def console_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})


def problem_with(command: list[str], image: str | None) -> str | None:
    """Why `command` cannot run in `image`, or None when it can."""
    module = manifests.python_module(command)
    if module is not None:
        spec = importlib.util.find_spec(module)
        if spec is None:
            return f"no module {module!r}"
        entry = f"{module}.__main__" if spec.submodule_search_locations is not None else module
        if importlib.util.find_spec(entry) is None:
            return f"package {module!r} has no __main__"
        loaded = importlib.import_module(entry)
        if not callable(getattr(loaded, "main", None)):
            return f"{entry} has no main()"
        return None
    program = command[0].rsplit("/", 1)[-1]
    if program in console_scripts():
        target = console_scripts()[program]
        module_name, _, attr = target.partition(":")
        if not callable(getattr(importlib.import_module(module_name), attr, None)):
            return f"console script {program} -> {target} is not callable"
        return None
    if program in REDIS_COMMANDS:
        return None if (image or "").split(":")[0] in ("redis", "docker.io/library/redis") else f"{program} outside the redis image"
    return f"unknown program {command[0]!r}"


@pytest.fixture(scope="module")
def containers() -> list[Container]:
    return manifests.containers({"KERNELSCOPE_WORKER_TOKEN": "x"})


def test_every_command_and_probe_can_run(containers: list[Container]) -> None:
    checked = 0
    problems = []
    for c in containers:
        commands = ([c.command] if c.command and c.command != BUILD_STAGE else []) + c.probes
        image = c.image or (f"kernelscope/{c.dockerfile.path.name.split('.', 1)[1]}" if c.dockerfile else None)
        for command in commands:
            checked += 1
            problem = problem_with(command, image)
            if problem:
                problems.append(f"{c.where}: {command}: {problem}")
    assert not problems
    assert checked >= 12


def test_the_check_catches_what_cannot_run() -> None:
    assert problem_with(["python", "-m", "service"], "kernelscope/service:0.1.0") is None
    assert problem_with(["python", "-m", "deploy.probe"], "kernelscope/service:0.1.0") is None
    assert problem_with(["kernelscope", "up"], "kernelscope/service:0.1.0") is None
    assert "no module" in problem_with(["python", "-m", "service_that_is_not"], None)
    assert "no __main__" in problem_with(["python", "-m", "sdk"], None)
    assert "no main" in problem_with(["python", "-m", "deploy.redis"], None)
    assert "outside the redis image" in problem_with(["redis-cli", "ping"], "kernelscope/service:0.1.0")
    assert "unknown program" in problem_with(["celery", "worker"], None)


def test_console_scripts_resolve() -> None:
    scripts = console_scripts()
    assert "kernelscope" in scripts
    for name in scripts:
        assert problem_with([name], None) is None


def test_probes_run_in_the_service_image_only_where_it_has_the_probe(containers: list[Container]) -> None:
    # deploy.probe needs grpcio-health-checking, which only the server extra installs.
    for c in containers:
        for probe in c.probes:
            if manifests.python_module(probe) == "deploy.probe":
                assert c.role == "service", c.where
