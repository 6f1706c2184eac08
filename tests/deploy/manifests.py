"""The deployment files read into plain data, and what the code reads, for the deploy tests.

    dockerfiles()            {"service": Dockerfile, "worker-cpu": ..., "worker-cuda": ...}, each parsed into stages
    compose(environ)         deploy/compose.yaml, interpolated the way docker compose does (${VAR:-default}, ${VAR:?err})
    k8s_documents()          every document of deploy/k8s/*.yaml
    containers(environ)      every container the files define (compose services, Kubernetes pod containers,
                             the Dockerfiles' stages), each with its command, its effective environment and
                             its role ("service", "worker", "redis", "build")
    code_env_vars(role)      the environment variables the code of that role reads, found in the source
                             (service: Config's fields plus every os.environ read under service/ and in
                             deploy/probe.py; worker: every os.environ read under workers/)

Nothing here knows a list of variable names: the tests compare the files against the code.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKER_DIR = DEPLOY / "docker"
K8S_DIR = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose.yaml"
# What an operator must set for compose to interpolate (${KERNELSCOPE_WORKER_TOKEN:?...}).
OPERATOR_ENV = {"KERNELSCOPE_WORKER_TOKEN": "token-from-the-operator"}

# Variables the files may set that no kernelscope code reads, each for a tool the images run.
THIRD_PARTY_ENV = {
    "PATH": "puts the image's virtualenv first",
    "PYTHONUNBUFFERED": "log lines reach `docker logs` / `kubectl logs` at once",
    "PYTHONDONTWRITEBYTECODE": "no .pyc writes under a read-only root filesystem",
    "PIP_NO_CACHE_DIR": "no pip cache in the build stage's layers",
    "PIP_DISABLE_PIP_VERSION_CHECK": "no network call for pip's version check",
    "MPLCONFIGDIR": "matplotlib's cache in a writable place under a read-only root filesystem",
}


# --- Dockerfiles ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    value: str  # the rest of the logical line, continuations joined
    line: int


@dataclass
class Stage:
    base: str  # the FROM image, global ARG defaults substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """Every ENV of this stage (later ones win); values as written, $VAR references left as they are."""
        env: dict[str, str] = {}
        for instruction in self.all("ENV"):
            env.update(env_assignments(instruction.value))
        return env


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]  # ARGs declared before the first FROM, with their defaults
    stages: list[Stage]

    @property
    def runtime(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Logical lines (comments dropped, backslash continuations joined) grouped into stages."""
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append((start, pending + line))
        pending = ""
    if pending:
        raise ValueError(f"{path}: the last instruction ends with a continuation")
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, text in logical:
        keyword, _, value = text.partition(" ")
        instruction = Instruction(keyword.upper(), value.strip(), number)
        if instruction.keyword == "FROM":
            parts = instruction.value.split()
            base = _substitute(parts[0], args)
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            if instruction.keyword != "ARG":
                raise ValueError(f"{path}:{number}: only ARG may come before the first FROM, got {keyword}")
            key, _, default = instruction.value.partition("=")
            args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(path=path, args=args, stages=stages)


def dockerfiles() -> dict[str, Dockerfile]:
    """Parsed deploy/docker/Dockerfile.<image>, keyed by <image> (the image name's last component)."""
    return {p.name.split(".", 1)[1]: parse_dockerfile(p) for p in sorted(DOCKER_DIR.glob("Dockerfile.*"))}


def exec_form(value: str) -> list[str]:
    """The JSON (exec) form of CMD / ENTRYPOINT / HEALTHCHECK CMD; ValueError for the shell form."""
    try:
        argv = json.loads(value)
    except json.JSONDecodeError:
        raise ValueError(f"not in exec (JSON) form: {value!r}") from None
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"not a list of strings: {value!r}")
    return argv


def healthcheck_command(value: str) -> list[str] | None:
    """The command of a HEALTHCHECK instruction (its --options skipped); None for HEALTHCHECK NONE."""
    if value.strip().upper() == "NONE":
        return None
    match = re.search(r"\bCMD\s+(.*)$", value)
    if not match:
        raise ValueError(f"HEALTHCHECK without CMD: {value!r}")
    return exec_form(match.group(1))


def env_assignments(value: str) -> dict[str, str]:
    """ENV a=1 b="two words" -> {"a": "1", "b": "two words"} (the legacy `ENV key value` form is refused)."""
    pairs = {}
    for token in shlex.split(value):
        key, sep, val = token.partition("=")
        if not sep:
            raise ValueError(f"ENV {value!r}: use the key=value form")
        pairs[key] = val
    return pairs


def _substitute(text: str, args: Mapping[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


# --- compose -------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(text: str, environ: Mapping[str, str]) -> str:
    """docker compose's interpolation: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3) or ""
        value = environ.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":?", "?") and unset:
            raise KeyError(f"{name}: {arg}")
        if op in (":-", "-") and unset:
            return arg
        return value or ""

    return _INTERPOLATION.sub(replace, text)


def _interpolate_tree(node: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, environ)
    if isinstance(node, list):
        return [_interpolate_tree(n, environ) for n in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, environ) for k, v in node.items()}
    return node


def compose_raw() -> dict[str, Any]:
    """deploy/compose.yaml as written (YAML anchors and merge keys resolved, no interpolation)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose(environ: Mapping[str, str]) -> dict[str, Any]:
    """deploy/compose.yaml as docker compose would see it with `environ` as the shell's environment."""
    return _interpolate_tree(compose_raw(), environ)


def compose_env(service: Mapping[str, Any]) -> dict[str, str]:
    """A compose service's `environment`, mapping or list form, as a dict of strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


# --- Kubernetes ----------------------------------------------------------------------------------


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in k8s_files():
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
    return docs


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def workloads(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        if doc.get("kind") in WORKLOAD_KINDS:
            yield doc


def pod_containers(workload: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def quantity_bytes(text: str | int) -> int:
    """A Kubernetes or compose memory quantity ("32Gi", "512Mi", "8g", "1536mb", 1024) in bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not match:
        raise ValueError(f"not a memory quantity: {text!r}")
    number, unit = float(match.group(1)), match.group(2)
    units = {
        "": 1, "b": 1,
        "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
        "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
        "k": 1 << 10, "m": 1 << 20, "g": 1 << 30,  # compose / docker: binary
        "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30,  # redis.conf: binary
    }
    if unit not in units:
        raise ValueError(f"unknown unit in {text!r}")
    return int(number * units[unit])


# --- every container, one shape -----------------------------------------------------------------


@dataclass(frozen=True)
class SecretRef:
    """An environment value taken from a Kubernetes Secret (or a compose ${VAR:?} the operator supplies)."""

    name: str
    key: str


@dataclass
class Container:
    where: str  # e.g. "compose service worker-cpu", "k8s Deployment/kernelscope-service container service"
    image: str | None  # the image reference, None for a Dockerfile stage itself
    dockerfile: Dockerfile | None  # the project's Dockerfile that builds `image`, if any
    command: list[str] | None  # what the container runs (explicit, else the image's CMD)
    env: dict[str, str | SecretRef]  # what this file sets (not what the image sets)
    image_env: dict[str, str] = field(default_factory=dict)  # what the image's runtime stage sets
    probes: list[list[str]] = field(default_factory=list)  # exec-style health commands

    @property
    def role(self) -> str:
        return role_of(self.command)

    def effective_env(self, secret_value: str = "s3cret") -> dict[str, str]:
        """The environment the process sees: the image's, then this file's; secrets as `secret_value`."""
        merged: dict[str, str] = {k: v for k, v in self.image_env.items() if k not in THIRD_PARTY_ENV}
        for key, value in self.env.items():
            merged[key] = secret_value if isinstance(value, SecretRef) else value
        return merged


BUILD_STAGE = ["<build stage>"]  # the "command" of a Dockerfile's build stages, which run no kernelscope code


def role_of(command: list[str] | None) -> str:
    """"service" for `python -m service`, "worker" for `python -m workers`, "redis" for redis-server,
    "build" for a Dockerfile's build stage, "unknown" for anything else."""
    if not command:
        return "unknown"
    if command == BUILD_STAGE:
        return "build"
    if command[0].rsplit("/", 1)[-1] == "redis-server":
        return "redis"
    module = python_module(command)
    return {"service": "service", "workers": "worker"}.get(module or "", "unknown")


def python_module(command: list[str]) -> str | None:
    """X of `python -m X ...` (also python3), else None."""
    if len(command) >= 3 and re.fullmatch(r"python3?(\.\d+)?", command[0].rsplit("/", 1)[-1]) and command[1] == "-m":
        return command[2]
    return None


def image_dockerfile(image: str | None) -> Dockerfile | None:
    """The project Dockerfile that builds `kernelscope/<name>:<tag>`, None for other images."""
    if not image or not image.startswith("kernelscope/"):
        return None
    name = image.split("/", 1)[1].split(":", 1)[0]
    found = dockerfiles().get(name)
    if found is None:
        raise KeyError(f"image {image}: no deploy/docker/Dockerfile.{name}")
    return found


def image_cmd(dockerfile: Dockerfile | None) -> list[str] | None:
    if dockerfile is None:
        return None
    cmd = dockerfile.runtime.last("CMD")
    return exec_form(cmd.value) if cmd else None


def containers(environ: Mapping[str, str]) -> list[Container]:
    """Every container of compose (interpolated with `environ`), of deploy/k8s, and every Dockerfile stage."""
    found: list[Container] = []
    raw = compose_raw()["services"]
    for name, service in compose(environ)["services"].items():
        dockerfile = image_dockerfile(service.get("image"))
        build = service.get("build") or {}
        if build:
            built = dockerfiles()[Path(build["dockerfile"]).name.split(".", 1)[1]]
            assert dockerfile is not None and built.path == dockerfile.path, (
                f"compose service {name}: image {service.get('image')} is built from {build['dockerfile']}"
            )
        command = service.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        env: dict[str, str | SecretRef] = dict(compose_env(service))
        for key, value in compose_env(raw[name]).items():
            if re.fullmatch(r"\$\{\w+:\?[^}]*\}", value):  # supplied by the operator, never written here
                env[key] = SecretRef(name="compose-environment", key=key)
        probes = []
        test = (service.get("healthcheck") or {}).get("test")
        if test:
            probes.append(test[1:] if test[0] in ("CMD", "CMD-SHELL") else test)
        found.append(Container(
            where=f"compose service {name}",
            image=service.get("image"),
            dockerfile=dockerfile,
            command=command or image_cmd(dockerfile),
            env=env,
            image_env=dockerfile.runtime.env() if dockerfile else {},
            probes=probes,
        ))
    for workload in workloads(k8s_documents()):
        for c in pod_containers(workload):
            dockerfile = image_dockerfile(c.get("image"))
            env = {}
            for item in c.get("env") or []:
                if "valueFrom" in item:
                    ref = item["valueFrom"].get("secretKeyRef")
                    env[item["name"]] = SecretRef(ref["name"], ref["key"]) if ref else "<valueFrom>"
                else:
                    env[item["name"]] = str(item.get("value", ""))
            probes = [
                probe["exec"]["command"]
                for probe in (c.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe"))
                if probe and "exec" in probe
            ]
            found.append(Container(
                where=f"k8s {workload['kind']}/{workload['metadata']['name']} container {c['name']}",
                image=c.get("image"),
                dockerfile=dockerfile,
                command=(list(c.get("command") or []) + list(c.get("args") or [])) or image_cmd(dockerfile),
                env=env,
                image_env=dockerfile.runtime.env() if dockerfile else {},
                probes=probes,
            ))
    for image, dockerfile in dockerfiles().items():
        for index, stage in enumerate(dockerfile.stages):
            runtime = index == len(dockerfile.stages) - 1
            health = stage.last("HEALTHCHECK")
            probe = healthcheck_command(health.value) if health else None
            found.append(Container(
                where=f"Dockerfile.{image} stage {stage.name or index}",
                image=None,
                dockerfile=dockerfile,
                command=image_cmd(dockerfile) if runtime else BUILD_STAGE,
                env=dict(stage.env()),
                probes=[probe] if probe else [],
            ))
    return found


# --- what the code reads -------------------------------------------------------------------------


def env_reads(source: str) -> set[str]:
    """Names of environment variables a Python source reads by a literal name.

    Recognised: os.environ.get("X"), os.getenv("X"), os.environ["X"], os.environ.pop("X"),
    os.environ.setdefault("X"), "X" in os.environ (and the same through any `environ` name);
    an assignment os.environ["X"] = ... is a write, not a read.
    """
    names: set[str] = set()

    def is_environ(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
            isinstance(node, ast.Name) and node.id == "environ"
        )

    def literal(node: ast.AST) -> str | None:
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = literal(node.args[0])
            if name is None:
                continue
            if isinstance(func, ast.Attribute) and func.attr in ("get", "pop", "setdefault") and is_environ(func.value):
                names.add(name)
            elif (isinstance(func, ast.Attribute) and func.attr == "getenv") or (
                isinstance(func, ast.Name) and func.id == "getenv"
            ):
                names.add(name)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and is_environ(node.value):
            name = literal(node.slice)
            if name is not None:
                names.add(name)
        elif isinstance(node, ast.Compare) and any(is_environ(c) for c in node.comparators):
            name = literal(node.left)
            if name is not None:
                names.add(name)
    return names


def _reads_under(*paths: Path) -> set[str]:
    names: set[str] = set()
    for path in paths:
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for file in files:
            names |= env_reads(file.read_text())
    return names


def config_env_vars() -> set[str]:
    """The variables service/config.py's Config maps its fields to."""
    from service.config import Config

    return {f.metadata["env"] for f in dataclasses.fields(Config)}


@functools.lru_cache(maxsize=None)
def _code_env_vars(role: str) -> frozenset[str]:
    if role == "service":
        return frozenset(config_env_vars() | _reads_under(ROOT / "service", DEPLOY / "probe.py"))
    if role == "worker":
        return frozenset(_reads_under(ROOT / "workers"))
    return frozenset()


def code_env_vars(role: str) -> set[str]:
    """The variables the processes of `role` read: "service" (with the probe that runs beside it), "worker"."""
    return set(_code_env_vars(role))


def worker_int_settings() -> set[str]:
    """Worker variables whose default in workers/defaults.py is an int (the comment above names the variable)."""
    import workers.defaults as defaults

    text = (ROOT / "workers" / "defaults.py").read_text()
    found = set()
    for match in re.finditer(r"^# ([A-Z][A-Z0-9_]+):.*\n(?:#.*\n)*([A-Z][A-Z0-9_]+) = ", text, flags=re.MULTILINE):
        env, constant = match.groups()
        value = getattr(defaults, constant, None)
        if isinstance(value, int) and not isinstance(value, bool):  # a switch is not read with int()
            found.add(env)
    return found
