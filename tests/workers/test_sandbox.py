"""The sandboxed model process: what "model code" (a Python callable run by workers.sandbox) can and cannot do.

Each hostile test fails without the confinement (checked by making `_confine` return before any layer: the
marker file appears, /etc/passwd and the cache are read, the listener accepts, the token is in the environ).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from workers import sandbox
from workers.errors import TaskError

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ks-test-worker-token-5f1c"

pytestmark = pytest.mark.skipif(sandbox.landlock_abi() == 0, reason="this kernel has no Landlock (the sandbox degrades, see test_without_landlock...)")


@pytest.fixture()
def place(tmp_path: Path) -> dict[str, Path]:
    """A scratch dir, a shared blob cache with another tenant's entry, a blob store, and this job's input."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ("a" * 64)).write_bytes(b"another tenant's model")
    store = tmp_path / "store"
    store.mkdir()
    (store / "blob").write_bytes(b"stored blob")
    mine = cache / ("b" * 64)
    mine.write_bytes(b"this job's model")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return {"cache": cache, "store": store, "mine": mine, "scratch": scratch, "outside": tmp_path / "marker"}


def _policy(place: dict[str, Path], **limits: Any) -> sandbox.Policy:
    return sandbox.Policy(scratch=place["scratch"], inputs=[place["mine"]], **limits)


def _attempt(fn: Any) -> str:
    try:
        return f"ok {fn()!r}"
    except OSError as exc:
        return f"refused {exc.errno}"


def test_model_code_writes_only_its_scratch_dir(place: dict[str, Path]) -> None:
    outside, scratch = place["outside"], place["scratch"]

    def model_code(channel: Any) -> dict[str, str]:
        return {
            "outside": _attempt(lambda: outside.write_text("pwned")),
            "victim": _attempt(lambda: (place["cache"] / ("a" * 64)).write_bytes(b"evil")),
            "scratch": _attempt(lambda: (scratch / "artifact.json").write_text("{}")),
        }

    seen, layers = sandbox.run_in_sandbox(model_code, _policy(place))
    assert seen["outside"].startswith("refused") and not outside.exists()
    assert seen["victim"].startswith("refused") and (place["cache"] / ("a" * 64)).read_bytes() == b"another tenant's model"
    assert seen["scratch"] == "ok 2" and (scratch / "artifact.json").exists()
    assert layers.landlock and layers.no_new_privs


def test_model_code_reads_only_its_own_input(place: dict[str, Path]) -> None:
    home = os.path.expanduser("~")  # the worker's home (the model process's HOME is its scratch dir)

    def model_code(channel: Any) -> dict[str, str]:
        return {
            "passwd": _attempt(lambda: Path("/etc/passwd").read_text()[:4]),
            "cache_dir": _attempt(lambda: os.listdir(place["cache"])),
            "other_tenant": _attempt(lambda: (place["cache"] / ("a" * 64)).read_bytes()),
            "store": _attempt(lambda: (place["store"] / "blob").read_bytes()),
            "home": _attempt(lambda: os.listdir(home)),
            "mine": _attempt(lambda: place["mine"].read_bytes()),
        }

    seen, _ = sandbox.run_in_sandbox(model_code, _policy(place))
    for what in ("passwd", "cache_dir", "other_tenant", "store", "home"):
        assert seen[what].startswith("refused"), (what, seen[what])
    assert seen["mine"] == "ok b\"this job's model\""


def test_model_code_cannot_reach_a_listening_socket(place: dict[str, Path]) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def model_code(channel: Any) -> str:
        return _attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=5).close())

    try:
        seen, layers = sandbox.run_in_sandbox(model_code, _policy(place))
        assert seen.startswith("refused"), seen
        listener.settimeout(0.5)
        with pytest.raises(socket.timeout):
            listener.accept()  # nobody ever connected
    finally:
        listener.close()
    assert layers.network in ("no-sockets", "no-tcp")


def test_inherited_connections_are_closed(place: dict[str, Path]) -> None:
    """The horse's own sockets (Redis, the service) do not survive into the model process."""
    a, b = socket.socketpair()

    def model_code(channel: Any) -> str:
        return _attempt(lambda: os.fstat(a.fileno()))

    try:
        seen, _ = sandbox.run_in_sandbox(model_code, _policy(place))
    finally:
        a.close()
        b.close()
    assert seen.startswith("refused 9"), seen  # EBADF


def test_allocating_past_the_memory_limit_is_resource_exhausted(place: dict[str, Path]) -> None:
    def model_code(channel: Any) -> float:
        import torch

        return float(torch.ones(2**30, dtype=torch.float32).sum())  # 4 GiB under a 1 GiB limit

    with pytest.raises(TaskError) as caught:
        sandbox.run_in_sandbox(model_code, _policy(place, memory_bytes=1 << 30))
    assert (caught.value.code, caught.value.reason) == ("RESOURCE_EXHAUSTED", "MEMORY_LIMIT")


@pytest.mark.parametrize("signum, code, reason", [
    (signal.SIGKILL, "RESOURCE_EXHAUSTED", "MEMORY_LIMIT"),  # what the OOM killer sends
    (signal.SIGSEGV, "ABORTED", "MODEL_PROCESS_SIGSEGV"),
    (signal.SIGXCPU, "RESOURCE_EXHAUSTED", "CPU_LIMIT"),
])
def test_a_killed_model_process_is_a_clear_error(place: dict[str, Path], signum: int, code: str, reason: str) -> None:
    def model_code(channel: Any) -> None:
        signal.signal(signum, signal.SIG_DFL) if signum != signal.SIGKILL else None
        os.kill(os.getpid(), signum)
        time.sleep(30)

    with pytest.raises(TaskError) as caught:
        sandbox.run_in_sandbox(model_code, _policy(place))
    assert (caught.value.code, caught.value.reason) == (code, reason)


def test_progress_and_results_come_back_over_the_pipe(place: dict[str, Path]) -> None:
    got: list[dict[str, Any]] = []

    def model_code(channel: Any) -> dict[str, int]:
        channel.send("progress", progress={"stage": "half", "fraction": 0.5})
        return {"answer": 42}

    value, _ = sandbox.run_in_sandbox(model_code, _policy(place), on_message=got.append)
    assert value == {"answer": 42}
    assert [m for m in got if m["kind"] != "layers"] == [{"kind": "progress", "progress": {"stage": "half", "fraction": 0.5}}]
    assert got[0]["kind"] == "layers" and got[0]["layers"]["landlock"]


def test_without_landlock_the_sandbox_says_so(place: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "landlock_abi", lambda: 0)
    _, layers = sandbox.run_in_sandbox(lambda channel: None, _policy(place))
    assert not layers.landlock and any("no Landlock" in w for w in layers.warnings)


SECRET_PROBE = textwrap.dedent(
    """
    import json, sys, tempfile
    from pathlib import Path
    from workers import sandbox
    scratch = Path(tempfile.mkdtemp())
    def model_code(channel):
        import os
        return {"environ": open("/proc/self/environ", "rb").read().decode(errors="replace"), "env": dict(os.environ)}
    seen, layers = sandbox.run_in_sandbox(model_code, sandbox.Policy(scratch=scratch))
    print(json.dumps(seen))
    """
)


def test_the_token_is_in_no_environment_of_the_model_process() -> None:
    """Even when the horse was exec'd with the token (no re-exec), the model process's environ block is blanked."""
    env = {**os.environ, "KERNELSCOPE_WORKER_TOKEN": TOKEN, "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)}
    out = subprocess.run([sys.executable, "-c", SECRET_PROBE], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert TOKEN not in seen["environ"] and TOKEN not in json.dumps(seen["env"])
    assert "KERNELSCOPE_WORKER_TOKEN" not in seen["env"]


UNPRIVILEGED = textwrap.dedent(
    """
    import json, os, socket, sys
    from pathlib import Path
    from workers import sandbox
    base = Path(sys.argv[1])
    scratch = base / "scratch"
    scratch.mkdir()
    listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(1)
    port = listener.getsockname()[1]
    def attempt(fn):
        try:
            fn(); return "ok"
        except OSError as exc:
            return "refused"
    def model_code(channel):
        return {
            "uid": os.getuid(),
            "outside": attempt(lambda: (base / "marker").write_text("x")),
            "secret": attempt(lambda: (base / "secret").read_text()),
            "tcp": attempt(lambda: socket.create_connection(("127.0.0.1", port), timeout=5)),
            "scratch": attempt(lambda: (scratch / "a").write_text("x")),
        }
    seen, layers = sandbox.run_in_sandbox(model_code, sandbox.Policy(scratch=scratch, memory_bytes=2 << 30))
    seen["landlock"] = layers.landlock
    print(json.dumps(seen))
    """
)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to become nobody")
def test_the_sandbox_works_as_an_unprivileged_user() -> None:
    base = Path(tempfile.mkdtemp(prefix="ks-unpriv-"))
    try:
        os.chmod(base, 0o777)
        (base / "secret").write_text("readable by nobody without the sandbox")
        os.chmod(base / "secret", 0o644)
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", UNPRIVILEGED, str(base)]
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p), "OMP_NUM_THREADS": "1", "HOME": str(base)}
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=str(base))
        if out.returncode != 0 and "Permission denied" in out.stderr and "site-packages" in out.stderr:
            pytest.skip("this interpreter is not readable by an unprivileged user")
        assert out.returncode == 0, out.stderr[-3000:]
        seen = json.loads(out.stdout.strip().splitlines()[-1])
        assert seen["uid"] == 65534 and seen["landlock"]
        assert seen == {**seen, "outside": "refused", "secret": "refused", "tcp": "refused", "scratch": "ok"}
        assert not (base / "marker").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def record_environments() -> dict[str, Any]:
    """An RQ job run by a real `python -m workers`: what /proc/<pid>/environ shows for the worker (the horse's
    parent), the horse, and a sandboxed model process; and whether the horse still has the token in memory."""
    import hashlib

    from workers import connection

    def environ(pid: str) -> str:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")

    child, _ = sandbox.run_in_sandbox(lambda channel: {"environ": environ("self"), "env": dict(os.environ)},
                                      sandbox.Policy(scratch=Path(tempfile.mkdtemp())))
    token = connection.ServiceConnection.from_settings().token
    return {"worker": environ(str(os.getppid())), "horse": environ("self"), "horse_env": dict(os.environ),
            "child": child["environ"], "child_env": child["env"], "token_sha": hashlib.sha256(token.encode()).hexdigest()}


@pytest.mark.slow
def test_no_worker_process_shows_the_token_in_its_environ(redis_url: str, redis_conn: Any) -> None:
    import hashlib

    from rq import Queue
    from rq.serializers import JSONSerializer

    queue = Queue("environ-probe", connection=redis_conn, serializer=JSONSerializer)
    job = queue.enqueue("tests.workers.test_sandbox.record_environments")
    env = {**os.environ, "KERNELSCOPE_WORKER_TOKEN": TOKEN, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "workers", "--burst", "--no-preload", "--redis-url", redis_url, "--queue", "environ-probe"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    job.refresh()
    seen = job.return_value()
    assert seen is not None, done.stderr[-3000:]
    for where in ("worker", "horse", "child", "horse_env", "child_env"):
        assert TOKEN not in json.dumps(seen[where]), where
    assert seen["token_sha"] == hashlib.sha256(TOKEN.encode()).hexdigest()  # the horse still holds it, in memory


def _cuda_wanted() -> bool:
    import torch

    return os.environ.get("KERNELSCOPE_TEST_DEVICE", "").startswith("cuda") and torch.cuda.is_available()


@pytest.mark.skipif(not os.environ.get("KERNELSCOPE_TEST_DEVICE", "").startswith("cuda"), reason="CUDA check: KERNELSCOPE_TEST_DEVICE=cuda on a GPU machine")
def test_cuda_works_inside_the_sandbox(place: dict[str, Path]) -> None:
    """CUDA initialises in the model process (never before the fork) under Landlock, seccomp and RLIMIT_DATA."""
    import torch

    assert not torch.cuda.is_initialized(), "CUDA must not be initialised before the fork"

    def model_code(channel: Any) -> dict[str, Any]:
        import torch

        torch.manual_seed(0)
        conv = torch.nn.Conv3d(3, 4, 3)
        x = torch.randn(2, 3, 4, 8, 8)
        on_gpu = conv.cuda()(x.cuda()).cpu()
        return {"device": torch.cuda.get_device_name(0), "diff": float((on_gpu - conv.cpu()(x)).abs().max()),
                "passwd": _attempt(lambda: Path("/etc/passwd").read_text()[:4])}

    seen, layers = sandbox.run_in_sandbox(model_code, _policy(place, memory_bytes=16 << 30))
    assert seen["diff"] < 1e-3 and seen["passwd"].startswith("refused"), seen
    assert layers.landlock and layers.seccomp
    assert _cuda_wanted()


def test_a_read_path_holding_the_cache_is_dropped(place: dict[str, Path]) -> None:
    """The worker's working directory is on sys.path (python -m): if the cache lies beneath it, it stays unreadable."""
    policy = sandbox.Policy(scratch=place["scratch"], inputs=[place["mine"]], extra_read=[str(place["cache"].parent)], private=[place["cache"]])

    def model_code(channel: Any) -> str:
        return _attempt(lambda: (place["cache"] / ("a" * 64)).read_bytes())

    seen, _ = sandbox.run_in_sandbox(model_code, policy)
    assert seen.startswith("refused"), seen


def test_processes_the_model_started_die_with_it(place: dict[str, Path]) -> None:
    """A grandchild left behind (to swap artifacts for links while the horse uploads, say) is killed."""

    def model_code(channel: Any) -> int:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        return pid

    grandchild, _ = sandbox.run_in_sandbox(model_code, _policy(place))
    deadline = time.monotonic() + 10
    while Path(f"/proc/{grandchild}").exists() and "Z" not in Path(f"/proc/{grandchild}/stat").read_text().split()[2] and time.monotonic() < deadline:
        time.sleep(0.05)
    state = Path(f"/proc/{grandchild}/stat").read_text().split()[2] if Path(f"/proc/{grandchild}").exists() else "gone"
    assert state in ("gone", "Z"), state


def test_artifacts_are_uploaded_without_following_links(tmp_path: Path) -> None:
    from workers import job

    out = tmp_path / "scratch" / "task0"
    out.mkdir(parents=True)
    (out / "plot.png").write_bytes(b"png")
    secret = tmp_path / "secret"
    secret.write_text("the worker's secret")
    (out / "leak.json").symlink_to(secret)
    sent: list[tuple[str, bytes]] = []

    class Connection:
        def write_artifact(self, job_id: str, task: str, name: str, path: Path, media_type: str) -> dict:
            sent.append((name, path.read_bytes()))
            return {"name": name}

    job._upload(Connection(), "j", "t", out)  # type: ignore[arg-type]
    assert sent == [("plot.png", b"png")]


# A horse that has used gRPC, with a stream still open (as a channel's slow shutdown leaves it on a loaded machine)
# and the channel in uncollected garbage, forks the model process, which collects garbage and counts its threads.
GRPC_THEN_MODEL_PROCESS = textwrap.dedent(
    """
    import gc, json, os, sys, tempfile, time
    from pathlib import Path
    from workers import connection, sandbox  # what the horse imports before it first uses gRPC
    from workers.errors import TaskError
    import grpc

    gc.disable()  # the garbage below is still there when the horse forks
    channel = grpc.insecure_channel(sys.argv[1])
    stream = channel.unary_stream("/probe.Probe/Stream")(b"")
    next(stream)
    garbage = [channel, stream]
    garbage.append(garbage)
    del channel, stream, garbage
    scratch = Path(tempfile.mkdtemp()) / "scratch"
    scratch.mkdir()

    def model_code(pipe):
        time.sleep(0.5)  # any gRPC thread here now meets the descriptors _confine closed
        gc.collect()
        return len(os.listdir("/proc/self/task"))

    try:
        threads, _ = sandbox.run_in_sandbox(model_code, sandbox.Policy(scratch=scratch))
        print(json.dumps({"threads": threads}))
    except TaskError as exc:
        print(json.dumps({"error": exc.reason}))
    """
)


_GRPC_IMPORT_PROBE = textwrap.dedent(
    """
    import json, os, sys

    seen = []

    class Probe:
        def find_spec(self, name, path=None, target=None):
            if name == "grpc" and not seen:
                seen.append(os.environ.get("GRPC_ENABLE_FORK_SUPPORT"))
            return None

    sys.meta_path.insert(0, Probe())
    from workers import connection, job, sandbox  # the horse's imports, in the order a job makes them
    import grpc  # imported by now or here
    print(json.dumps(seen))
    """
)


def test_grpc_is_first_imported_with_fork_support_off() -> None:
    """grpcio reads GRPC_ENABLE_FORK_SUPPORT when first imported. workers/connection.py once set it after its own
    `from sdk import chunks` had imported grpc, and the model process died of SIGABRT again on a loaded machine
    (the test below, which needs the load to fail). Checked here without the load."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run([sys.executable, "-c", _GRPC_IMPORT_PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == ["0"]


@pytest.fixture()
def streaming_server() -> Iterator[str]:
    from concurrent import futures

    import grpc

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        for _ in range(1000):
            yield b"x" * 65536

    handler = grpc.method_handlers_generic_handler("probe.Probe", {"Stream": grpc.unary_stream_rpc_method_handler(stream)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_the_model_process_gets_nothing_running_of_the_horses_grpc(streaming_server: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run([sys.executable, "-c", GRPC_THEN_MODEL_PROCESS, streaming_server], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    # Before: gRPC's threads restarted in the model process (6 threads), or it died of SIGABRT on their closed fds.
    assert json.loads(done.stdout.splitlines()[-1]) == {"threads": 1}, done.stderr[-3000:]
    # and its garbage collection freed the horse's channel, whose gRPC calls then wrote to a closed eventfd.
    assert "Bad file descriptor" not in done.stderr, done.stderr[-3000:]


def _conv_in_model_process(channel: Any) -> str:
    torch.nn.functional.conv3d(torch.randn(2, 8, 16, 64, 64), torch.randn(8, 8, 3, 3, 3))
    return "ran"


def test_a_model_process_forked_after_parallel_torch_work_runs(place: dict[str, Path]) -> None:
    """libgomp's thread pool does not survive fork(): with the pool made by a 2-thread op in this process, a
    model process that asked for 2 threads hung in gomp_team_barrier_wait_end. The worker tests' autouse
    one-thread fixture (tests/workers/conftest.py) is what keeps the forked child off the parent's pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.nn.functional.conv3d(torch.randn(2, 8, 16, 64, 64), torch.randn(8, 8, 3, 3, 3))  # the pool now exists
    finally:
        torch.set_num_threads(threads)
    assert sandbox.run_in_sandbox(_conv_in_model_process, _policy(place))[0] == "ran"
