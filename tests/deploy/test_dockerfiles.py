"""The Dockerfiles: multi-stage, non-root, the right extras and torch build, copies that exist, and a build
context from which pip installs every module the image runs (Docker itself cannot run here)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.deploy import manifests
from tests.deploy.manifests import ROOT, Dockerfile, Stage, exec_form, healthcheck_command

PROJECT_PACKAGES = {"sdk", "service", "workers", "deploy", "kernelscope", "tests"}
# The code each image runs: its imports must be installed by the extras the image installs.
IMAGE_CODE = {"service": ["service", "deploy/probe.py"], "worker-cpu": ["workers"], "worker-cuda": ["workers"]}


@pytest.fixture(scope="module")
def images() -> dict[str, Dockerfile]:
    found = manifests.dockerfiles()
    assert set(found) == {"service", "worker-cpu", "worker-cuda"}
    return found


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def runs(stage: Stage) -> list[str]:
    return [i.value for i in stage.all("RUN")]


def pip_installs(dockerfile: Dockerfile) -> list[tuple[int, str]]:
    """(line, command) of every `pip install` in the build stages, in order."""
    found = []
    for stage in dockerfile.stages[:-1]:
        for instruction in stage.all("RUN"):
            for part in instruction.value.split("&&"):
                if re.search(r"\bpip3? install\b", part):
                    found.append((instruction.line, part.strip()))
    return found


def extras_installed(dockerfile: Dockerfile) -> set[str]:
    extras: set[str] = set()
    for _line, command in pip_installs(dockerfile):
        for match in re.finditer(r"\"?\.\[([\w,-]+)\]\"?", command):
            extras |= set(match.group(1).split(","))
    return extras


def test_every_image_is_multi_stage_and_runs_as_a_non_root_user(images: dict[str, Dockerfile]) -> None:
    for name, dockerfile in images.items():
        assert len(dockerfile.stages) >= 2, f"{name}: build and runtime stages"
        user = dockerfile.runtime.last("USER")
        assert user is not None, f"{name}: the runtime stage must switch to a non-root USER"
        uid = user.value.split(":")[0]
        # Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
        assert uid.isdigit() and int(uid) != 0, f"{name}: USER {user.value}"
        assert dockerfile.runtime.last("CMD") is not None, name
        assert dockerfile.runtime.last("HEALTHCHECK") is not None, f"{name}: say HEALTHCHECK NONE if there is none"


def test_kubernetes_runs_each_image_as_its_user(images: dict[str, Dockerfile]) -> None:
    for workload in manifests.workloads(manifests.k8s_documents()):
        pod = workload["spec"]["template"]["spec"]
        for container in manifests.pod_containers(workload):
            dockerfile = manifests.image_dockerfile(container["image"])
            if dockerfile is None:
                continue
            user = dockerfile.runtime.last("USER").value.split(":")[0]
            context = {**(pod.get("securityContext") or {}), **(container.get("securityContext") or {})}
            assert context.get("runAsNonRoot") is True, workload["metadata"]["name"]
            assert str(context.get("runAsUser")) == user, workload["metadata"]["name"]
            assert str(context.get("fsGroup", pod.get("securityContext", {}).get("fsGroup"))) == user


def test_copies_come_from_the_repository_or_an_earlier_stage(images: dict[str, Dockerfile]) -> None:
    for name, dockerfile in images.items():
        for index, stage in enumerate(dockerfile.stages):
            earlier = {s.name for s in dockerfile.stages[:index] if s.name} | {str(i) for i in range(index)}
            for instruction in stage.all("COPY") + stage.all("ADD"):
                assert instruction.keyword == "COPY", f"{name}:{instruction.line}: use COPY, not ADD"
                words = instruction.value.split()
                flags = [w for w in words if w.startswith("--")]
                paths = [w for w in words if not w.startswith("--")]
                source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
                if source_stage is not None:
                    assert source_stage in earlier, f"{name}:{instruction.line}: --from={source_stage}"
                    continue
                for source in paths[:-1]:
                    assert (ROOT / source).exists(), f"{name}:{instruction.line}: {source} is not in the repository"


def test_no_image_copies_the_operators_token_files(images: dict[str, Dockerfile]) -> None:
    secret_files = []
    for generator in manifests.kustomization().get("secretGenerator", []):
        names = generator.get("envs", []) + [f.split("=", 1)[-1] for f in generator.get("files", [])]
        secret_files += [(manifests.K8S_DIR / n).relative_to(ROOT) for n in names]
    assert secret_files
    for name, dockerfile in images.items():
        for stage in dockerfile.stages:
            for instruction in stage.all("COPY"):
                if "--from=" in instruction.value:
                    continue
                for source in instruction.value.split()[:-1]:
                    source_path = Path(source.rstrip("/"))
                    for secret in secret_files:
                        assert source_path != secret and source_path not in secret.parents, (
                            f"{name}:{instruction.line}: COPY {source} would put {secret} in the image"
                        )


def test_the_runtime_stage_gets_the_virtualenv_from_the_build_stage(images: dict[str, Dockerfile]) -> None:
    for name, dockerfile in images.items():
        copies = [i.value for i in dockerfile.runtime.all("COPY")]
        assert any("--from=" in c and "/opt/venv" in c for c in copies), name
        assert dockerfile.runtime.env()["PATH"].startswith("/opt/venv/bin:"), name
        assert not pip_installs(Dockerfile(dockerfile.path, {}, [dockerfile.runtime, dockerfile.runtime])), (
            f"{name}: nothing is pip-installed in the runtime stage"
        )


def test_each_image_installs_its_extra_and_the_service_no_torch(images: dict[str, Dockerfile]) -> None:
    extras = pyproject()["project"]["optional-dependencies"]
    assert extras_installed(images["service"]) == {"server"}
    assert extras_installed(images["worker-cpu"]) == {"worker"}
    assert extras_installed(images["worker-cuda"]) == {"worker"}
    for name, dockerfile in images.items():
        assert extras_installed(dockerfile) <= set(extras), name
    assert not any("torch" in command for _line, command in pip_installs(images["service"]))


def test_the_cpu_worker_installs_the_cpu_wheel_of_torch_before_the_project(images: dict[str, Dockerfile]) -> None:
    dockerfile = images["worker-cpu"]
    installs = pip_installs(dockerfile)
    torch = [(line, c) for line, c in installs if re.search(r"\btorch==", c)]
    project = [(line, c) for line, c in installs if ".[worker]" in c]
    assert len(torch) == 1 and len(project) == 1
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch[0][1]
    assert torch[0][0] < project[0][0], "torch must be installed before the project, or pip resolves it from PyPI"


def test_the_cuda_worker_starts_from_a_cuda_image_and_installs_cuda_torch(images: dict[str, Dockerfile]) -> None:
    dockerfile = images["worker-cuda"]
    for stage in dockerfile.stages:
        assert re.match(r"(docker\.io/)?(nvidia/cuda|pytorch/pytorch):", stage.base), stage.base
    index_url = dockerfile.args["TORCH_INDEX_URL"]
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index_url), index_url
    installs = pip_installs(dockerfile)
    torch = [(line, c) for line, c in installs if re.search(r"\btorch==", c)]
    project = [(line, c) for line, c in installs if ".[worker]" in c]
    assert len(torch) == 1 and "--index-url" in torch[0][1] and "TORCH_INDEX_URL" in torch[0][1]
    assert torch[0][0] < project[0][0]
    # The build fails (rather than shipping a CPU-only torch) when the wheel has no CUDA.
    assert any("torch.version.cuda" in r for r in runs(dockerfile.stages[0]))


def test_images_pin_the_torch_the_tests_run_against(images: dict[str, Dockerfile]) -> None:
    pinned = re.search(r"torch==([\w.+-]+)", (ROOT / "tests" / "run.sh").read_text()).group(1)
    for name in ("worker-cpu", "worker-cuda"):
        assert images[name].args["TORCH_VERSION"] == pinned, name


def test_the_service_image_exposes_the_port_it_binds_and_probes_it(images: dict[str, Dockerfile]) -> None:
    from deploy import probe
    from service import defaults

    runtime = images["service"].runtime
    env = runtime.env()
    exposed = {word.split("/")[0] for word in runtime.last("EXPOSE").value.split()}
    assert exposed == {env["KERNELSCOPE_PORT"], env["KERNELSCOPE_METRICS_PORT"]}
    assert env["KERNELSCOPE_HOST"] == "0.0.0.0"
    assert healthcheck_command(runtime.last("HEALTHCHECK").value) == ["python", "-m", "deploy.probe"]
    assert probe.DEFAULT_PORT == defaults.PORT  # the probe's fallback when KERNELSCOPE_PORT is unset
    assert exec_form(runtime.last("CMD").value) == ["python", "-m", "service"]
    volumes = exec_form(runtime.last("VOLUME").value)
    assert env["KERNELSCOPE_DATA_DIR"] in volumes


def _third_party_imports(paths: list[str]) -> set[str]:
    names: set[str] = set()
    for rel in paths:
        path = ROOT / rel
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - PROJECT_PACKAGES


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_normalise(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requirements}


def test_each_image_installs_every_package_its_code_imports(images: dict[str, Dockerfile]) -> None:
    project = pyproject()["project"]
    distributions = importlib.metadata.packages_distributions()
    for name, dockerfile in images.items():
        installed = _requirement_names(project["dependencies"])
        for extra in extras_installed(dockerfile):
            installed |= _requirement_names(project["optional-dependencies"][extra])
        if any(re.search(r"\btorch==", c) for _line, c in pip_installs(dockerfile)):
            installed.add("torch")
        missing = {}
        for module in _third_party_imports(IMAGE_CODE[name]):
            providers = {_normalise(d) for d in distributions.get(module, [module])}
            if not providers & installed:
                missing[module] = sorted(providers)
        assert not missing, f"{name}: imported but installed by none of its requirements: {missing}"


def _build_context(dockerfile: Dockerfile, dest: Path) -> Path:
    """The files the build stage copies from the repository, laid out as in its WORKDIR."""
    for instruction in dockerfile.stages[0].all("COPY"):
        words = [w for w in instruction.value.split() if not w.startswith("--")]
        *sources, target = words
        for source in sources:  # Docker's rules: a directory's contents go to target; files into target/
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(src, dest / target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
            elif target.endswith("/") or len(sources) > 1:
                (dest / target).mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / target / src.name)
            else:
                (dest / target).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / target)
    return dest


def _wheel_files(context: Path, out: Path) -> set[str]:
    """Build the wheel `pip install .` would build in `context`: pyproject's build backend, called directly
    (what pip does, without pip's own start-up cost)."""
    backend = pyproject()["build-system"]["build-backend"]
    out.mkdir()
    script = f"import {backend} as b; b.build_wheel({str(out)!r})"
    subprocess.run([sys.executable, "-c", script], cwd=context, check=True, capture_output=True, timeout=180)
    (wheel,) = out.glob("*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def _module_file(module: str) -> str:
    """The file in a wheel that `python -m module` runs."""
    path = module.replace(".", "/")
    return f"{path}/__main__.py" if (ROOT / path).is_dir() else f"{path}.py"


@pytest.mark.slow
def test_pip_installs_from_each_build_context_every_module_the_image_runs(
    images: dict[str, Dockerfile], tmp_path: Path
) -> None:
    # Images whose build stages copy the same files share one wheel build (the two workers do).
    contexts: dict[tuple[str, ...], list[str]] = {}
    for name, dockerfile in images.items():
        key = tuple(i.value for i in dockerfile.stages[0].all("COPY"))
        contexts.setdefault(key, []).append(name)
    jobs = {}
    for index, names in enumerate(contexts.values()):
        context = _build_context(images[names[0]], tmp_path / f"context{index}")
        jobs[tuple(names)] = (context, tmp_path / f"wheel{index}")
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        files = dict(zip(jobs, pool.map(lambda job: _wheel_files(*job), jobs.values())))
    for (names, (context, _out)), wheel in zip(jobs.items(), files.values()):
        assert "kernelscope/v1/kernelscope_pb2.py" in wheel and "kernelscope/v1/worker_pb2_grpc.py" in wheel
        assert not any(f.startswith("tests/") for f in wheel)
        for name in names:
            runtime = images[name].runtime
            commands = [exec_form(runtime.last("CMD").value)]
            probe = healthcheck_command(runtime.last("HEALTHCHECK").value)
            commands += [probe] if probe else []
            for command in commands:
                module = manifests.python_module(command)
                assert module and _module_file(module) in wheel, f"{name}: {command} is not in the installed wheel"
            for package in IMAGE_CODE[name]:
                if (context / package).is_dir():  # every module copied in is installed
                    missing = {str(p.relative_to(context)) for p in (context / package).rglob("*.py")} - wheel
                    assert not missing, f"{name}: not installed: {sorted(missing)[:5]}"
                else:
                    assert package in wheel, f"{name}: {package} is not installed"
