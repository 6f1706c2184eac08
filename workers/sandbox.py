"""The box the model process runs in: a forked child with no secrets, no network and one writable directory.

Loading a tenant's model is running the tenant's code (a TorchScript method, an operator we did not foresee, a
bug in a parser), so the job's work-horse never loads it itself. It forks a *model process* (`run_in_sandbox`)
which, before it touches the model, locks itself in with the kernel's own mechanisms, each a separate layer:

- rlimits: RLIMIT_DATA (memory; see `apply_limits` for why not RLIMIT_AS), RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE.
- every inherited descriptor closed but the result pipe and stdio (the horse's Redis socket and gRPC channel
  stay behind), the environment emptied of secrets, the initial environment block (what /proc/self/environ
  shows, which os.environ.pop cannot change) overwritten in place, PR_SET_DUMPABLE 0 and PR_SET_PDEATHSIG.
- PR_SET_NO_NEW_PRIVS: no setuid binary can give the process back what the next layers take away.
- Landlock (Linux >= 5.13; ABI 4 adds TCP, ABI 6 scoping): reads only beneath the interpreter, site-packages,
  /usr, /lib*, the dynamic loader's configuration, /proc/self, the CPU and PCI topology (/sys/devices), a few devices (and the NVIDIA
  devices when present), plus the job's own verified input *files* (not their directory: the blob cache, the blob
  store, other tenants' entries, home directories and /etc/passwd are out of reach); writes only beneath the
  job's fresh scratch directory; no TCP bind or connect; no signals to or abstract sockets of processes outside.
- seccomp: socket(), io_uring_setup(), setsid() and setpgid() fail with EACCES (the model process leads its own
  process group and cannot leave it, so the horse kills every process it started once it has exited). Landlock's network rules cover TCP only, and
  Landlock does not govern connecting to a UNIX socket by path (a Docker or Redis socket) or UDP; with no
  socket at all the model has no channel out except the result pipe.

On a CUDA machine (the NVIDIA devices exist) the driver needs three things more, found by bisecting on an H200:
read-write /dev/nvidia*, write access beneath /proc/self (its own process only), and AF_UNIX sockets (still no
AF_INET/AF_INET6/netlink/packet). The worker's CUDA image needs no package for any of this (ctypes only).

Why raw syscalls through ctypes and not a library: Landlock is three syscalls with fixed, versioned structs
(include/uapi/linux/landlock.h) and the seccomp filter is six BPF instructions; the PyPI `landlock` package is a
thin young wrapper with few users, and pyseccomp/libseccomp bindings need libseccomp.so in every image (the CUDA
base image included). Each binding below is a few lines checked against the header, with no new dependency
in any worker image, which is the smaller thing to trust (DESIGN: one noun per module, no heavy deps in workers).

It degrades loudly: a kernel without Landlock (or with an older ABI) logs a warning and `SandboxLayers`
says what was active; the job result carries it as its `sandbox` field. It works as root and unprivileged
(Landlock, no_new_privs and seccomp-with-no_new_privs need no capability).

The child speaks to the horse only through a pipe of JSON lines (never pickle: the horse must not run what a
compromised child sends). A child that dies of a signal becomes a TaskError: RESOURCE_EXHAUSTED/MEMORY_LIMIT for
SIGKILL (the OOM killer) unless its CPU time reached the limit, RESOURCE_EXHAUSTED/CPU_LIMIT for SIGXCPU,
ABORTED/MODEL_PROCESS_<SIGNAL> otherwise; never INTERNAL.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import fnmatch
import gc
import json
import logging
import os
import platform
import resource
import select
import signal
import site
import socket
import sys
import sysconfig
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from workers.errors import ResourceExhausted, TaskError, memory_error

log = logging.getLogger(__name__)

# Grace between the soft CPU limit (SIGXCPU, which ends the process) and the hard limit (SIGKILL).
CPU_GRACE_SECONDS = 5
FILE_SIZE_BYTES = 2 << 30  # the largest artifact a task may write
OPEN_FILES = 1024
MESSAGE_BYTES = 64 << 20  # the largest line the child may send

# Environment variables a worker holds that model code must never see (fnmatch patterns).
SECRET_PATTERNS: tuple[str, ...] = ("*TOKEN*", "*SECRET*", "*PASSWORD*", "*API_KEY*", "*CREDENTIAL*")
# What the model process loses on top: the Redis URL (it may carry a password) and the worker's secret pipe.
MODEL_PROCESS_DROPS: tuple[str, ...] = (*SECRET_PATTERNS, "REDIS_URL", "KERNELSCOPE_SECRET_FD")

# --- Landlock (include/uapi/linux/landlock.h) ---------------------------------------------------------------
_SYS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}  # create_ruleset, add_rule, restrict_self
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR, FS_MAKE_REG = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK, FS_MAKE_SYM = 1 << 9, 1 << 10, 1 << 11, 1 << 12
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
_FILE_ONLY = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (or it is disabled)."""
    numbers = _SYS.get(platform.machine())
    if numbers is None:
        return 0
    version = _libc.syscall(ctypes.c_long(numbers[0]), None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(version), 0)


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def _landlock(read: Iterable[str], write: Iterable[str], devices: Iterable[str], abi: int) -> None:
    """Restrict this process (and any child) to `read`, `write` (full rights beneath) and `devices` (rw files)."""
    create, add_rule, restrict = _SYS[platform.machine()]
    handled = _fs_rights(abi)
    attr = _RulesetAttr(handled, (NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0, (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0)
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    ruleset = _libc.syscall(ctypes.c_long(create), ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        rules = [(p, READ) for p in read] + [(p, handled) for p in write]
        rules += [(p, (FS_READ_FILE | FS_WRITE_FILE | FS_IOCTL_DEV | FS_TRUNCATE) & handled) for p in devices]
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a path this machine lacks
            try:
                if not os.path.isdir(f"/proc/self/fd/{fd}"):
                    access &= _FILE_ONLY
                rule = _PathBeneathAttr(access & handled, fd)
                if _libc.syscall(ctypes.c_long(add_rule), ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
            finally:
                os.close(fd)
        if _libc.syscall(ctypes.c_long(restrict), ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(ruleset)


# --- seccomp ------------------------------------------------------------------------------------------------
# arch, socket, then the calls refused outright: io_uring_setup, setsid, setpgid (the process group must stay whole
# so that the horse can kill every process the model started)
_AUDIT_ARCH = {"x86_64": (0xC000003E, 41, (425, 112, 109)), "aarch64": (0xC00000B7, 198, (425, 157, 154))}


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def _seccomp_no_sockets(allow_unix: bool = False) -> bool:
    """Install a filter making socket() (but AF_UNIX when allow_unix), io_uring_setup(), setsid() and setpgid() fail with EACCES.

    False on an architecture it does not know. allow_unix is for CUDA, whose driver opens a UNIX socket.
    """
    arch = _AUDIT_ARCH.get(platform.machine())
    if arch is None:
        return False
    audit_arch, nr_socket, refused = arch
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, deny = 0x7FFF0000, 0x00050000 | errno_mod.EACCES  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO
    n = len(refused)
    deny_at = 8 + n  # index of the final deny
    program = [
        (ld_abs, 0, 0, 4),  # 0: seccomp_data.arch
        (jeq, 0, deny_at - 2, audit_arch),  # 1: another ABI (i386 compat): deny
        (ld_abs, 0, 0, 0),  # 2: seccomp_data.nr
        (jge, deny_at - 4, 0, 0x40000000),  # 3: x32 syscall numbers: deny
    ]
    program += [(jeq, deny_at - (4 + i) - 1, 0, nr) for i, nr in enumerate(refused)]  # 4..3+n: deny
    program += [
        (jeq, 0, 2, nr_socket),  # 4+n: not socket(): allow
        (ld_abs, 0, 0, 16),  # 5+n: seccomp_data.args[0] (low half): the address family
        (jeq, 0, 1, socket.AF_UNIX if allow_unix else 0xFFFFFFFF),  # 6+n: AF_UNIX when allowed, else deny
        (ret, 0, 0, allow),  # 7+n
        (ret, 0, 0, deny),  # 8+n
    ]
    assert len(program) == deny_at + 1
    filters = (_SockFilter * len(program))(*[_SockFilter(*ins) for ins in program])
    prog = _SockFprog(len(program), filters)
    if _libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "seccomp")
    return True


# --- limits and environment ---------------------------------------------------------------------------------
def apply_limits(memory_bytes: int | None, cpu_seconds: int | None, file_bytes: int | None = None, open_files: int | None = None) -> None:
    """Cap private memory (RLIMIT_DATA), CPU time, file size and open files; None leaves one as is.

    Why RLIMIT_DATA and not RLIMIT_AS: torch with CUDA reserves tens of GiB of address space it never touches,
    so an address-space cap breaks CUDA initialisation; RLIMIT_DATA counts only private writable mappings (the
    heap and every anonymous mmap a tensor lives in). Limits can only be lowered: a value above the current hard
    limit is clamped to it.
    """
    if memory_bytes is not None:
        _lower(resource.RLIMIT_DATA, int(memory_bytes), int(memory_bytes))
    if cpu_seconds is not None:
        _lower(resource.RLIMIT_CPU, int(cpu_seconds), int(cpu_seconds) + CPU_GRACE_SECONDS)
    if file_bytes is not None:
        _lower(resource.RLIMIT_FSIZE, int(file_bytes), int(file_bytes))
    if open_files is not None:
        _lower(resource.RLIMIT_NOFILE, int(open_files), int(open_files))


def _lower(kind: int, soft: int, hard: int) -> None:
    cur_soft, cur_hard = resource.getrlimit(kind)
    if cur_hard != resource.RLIM_INFINITY:
        hard = min(hard, cur_hard)
        soft = min(soft, hard)
    if cur_soft != resource.RLIM_INFINITY:
        soft = min(soft, cur_soft)
    resource.setrlimit(kind, (soft, hard))


def is_secret(name: str, patterns: Iterable[str] = SECRET_PATTERNS) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def scrub_environment(patterns: Iterable[str] = SECRET_PATTERNS) -> list[str]:
    """Remove every secret from os.environ and blank it in the initial environment block; return the names."""
    pats = list(patterns)
    removed = sorted(k for k in os.environ if is_secret(k, pats))
    for key in removed:
        os.environ.pop(key, None)
    _blank_initial_environment(pats)
    return removed


def _blank_initial_environment(patterns: list[str]) -> None:
    """Overwrite secrets in the block /proc/self/environ reads (env_start..env_end, fields 50-51 of stat).

    os.environ.pop and unsetenv change only libc's pointer array; the bytes the kernel shows stay until exec.
    The block lives in our own writable stack, so no privilege is needed to zero it.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end (fields 50 and 51, 1-based)
        block = Path("/proc/self/environ").read_bytes()
    except (OSError, ValueError, IndexError):
        return
    offset = 0
    for entry in block.split(b"\0"):
        name = entry.split(b"=", 1)[0].decode(errors="replace")
        if entry and is_secret(name, patterns) and start + offset + len(entry) <= end:
            ctypes.memset(start + offset, ord("x"), len(entry))  # keep the NULs: the block's layout stays valid
        offset += len(entry) + 1


# --- the model process --------------------------------------------------------------------------------------
@dataclass
class SandboxLayers:
    """Which layers were active in the model process: the job result's `sandbox` field."""

    landlock_abi: int = 0
    landlock: bool = False
    network: str = "open"  # "no-sockets" (seccomp), "no-tcp" (Landlock >= 4 only), "open"
    seccomp: bool = False
    no_new_privs: bool = False
    rlimits: list[str] = field(default_factory=list)
    environment_scrubbed: bool = False
    warnings: list[str] = field(default_factory=list)


@dataclass
class Policy:
    """What the model process may touch. `inputs`: files it may read (the verified model and dataset)."""

    scratch: Path
    inputs: list[Path] = field(default_factory=list)
    memory_bytes: int | None = None
    cpu_seconds: int | None = None
    file_bytes: int | None = FILE_SIZE_BYTES
    open_files: int | None = OPEN_FILES
    extra_read: list[str] = field(default_factory=list)
    # Never readable, even when a read path above (the worker's working directory on sys.path, say) holds them:
    # such a read path is dropped. The job names the blob cache here.
    private: list[Path] = field(default_factory=list)


def read_paths() -> list[str]:
    """What Python, torch and the analyses read at run time (not /etc beyond the loader's cache, not /home)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sysconfig.get_paths().values(), *site.getsitepackages()}
    paths |= {p for p in sys.path if p and os.path.isdir(p)}  # the project itself when run from a checkout
    paths |= {os.path.dirname(os.path.realpath(sys.executable))}
    for name, module in list(sys.modules.items()):  # packages found by an import hook (an editable install)
        where = getattr(module, "__file__", None)
        if "." not in name and where:
            paths.add(os.path.dirname(where) if where.endswith("__init__.py") else where)
    paths |= {"/usr", "/lib", "/lib64", "/lib32", "/bin", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d"}
    paths |= {"/proc/self", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/sys/devices", "/sys/bus/pci", "/sys/fs/cgroup"}
    paths |= {"/dev/urandom", "/dev/random", "/dev/zero", "/etc/localtime", "/usr/share/zoneinfo", "/etc/fonts"}
    mpl = sys.modules.get("matplotlib")
    if mpl is not None:  # its font cache, read at the first plot
        paths |= {mpl.get_configdir(), mpl.get_cachedir()}
    if _cuda_present():  # CUDA reads the driver's state, its device numbers and modules
        paths |= {"/proc/driver/nvidia", "/proc/sys/vm", "/etc/nvidia", "/proc/devices", "/proc/modules", "/sys/module"}
    home = os.path.expanduser("~")
    return sorted(p for p in paths if p and os.path.exists(p) and os.path.realpath(p) not in ("/", home, "/home", "/root", "/etc", "/tmp"))


def _holds_any(path: str, private: Iterable[Path]) -> bool:
    """Whether `path` is one of `private` or a folder above one of them."""
    real = os.path.realpath(path)
    for p in private:
        inside = os.path.realpath(p)
        if inside == real or inside.startswith(real.rstrip("/") + "/"):
            log.warning("sandbox: %s is not readable by the model process: it holds %s", path, p)
            return True
    return False


def _cuda_present() -> bool:
    return os.path.exists("/dev/nvidiactl")


def _device_paths() -> list[str]:
    devices = ["/dev/null", "/dev/shm"]
    devices += [str(p) for p in Path("/dev").glob("nvidia*")]
    return devices


def _confine(policy: Policy, keep_fds: Iterable[int]) -> SandboxLayers:
    """In the model process, before the model: every layer, in an order where each one still can be set up."""
    layers = SandboxLayers()
    keep = sorted({0, 1, 2, *keep_fds})
    start = 3
    for fd in keep:
        if fd >= start:
            os.closerange(start, fd)
            start = fd + 1
    os.closerange(start, resource.getrlimit(resource.RLIMIT_NOFILE)[0] if resource.getrlimit(resource.RLIMIT_NOFILE)[0] != resource.RLIM_INFINITY else 65536)
    _libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG: die with the horse
    scrub_environment(MODEL_PROCESS_DROPS)  # reads /proc/self/environ: before the process stops being dumpable
    os.environ.update({"TMPDIR": str(policy.scratch), "HOME": str(policy.scratch)})
    import tempfile

    tempfile.tempdir = str(policy.scratch)
    layers.environment_scrubbed = b"TOKEN" not in Path("/proc/self/environ").read_bytes().upper()
    _libc.prctl(4, 0)  # PR_SET_DUMPABLE 0: no ptrace or /proc/<pid>/mem of this process by another of its user
    os.chdir(policy.scratch)

    apply_limits(policy.memory_bytes, policy.cpu_seconds, policy.file_bytes, policy.open_files)
    layers.rlimits = [n for n, v in (("data", policy.memory_bytes), ("cpu", policy.cpu_seconds), ("fsize", policy.file_bytes), ("nofile", policy.open_files)) if v]

    layers.no_new_privs = _libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    abi = landlock_abi()
    layers.landlock_abi = abi
    if abi == 0:
        layers.warnings.append("this kernel has no Landlock: the model process can read and write what the worker can")
    else:
        # CUDA's driver writes to files of its own process under /proc/self (found by bisecting on an H200).
        writable = [str(policy.scratch), *(["/proc/self"] if _cuda_present() else [])]
        readable = [p for p in [*read_paths(), *policy.extra_read] if not _holds_any(p, policy.private)]
        _landlock([*readable, *map(str, policy.inputs)], writable, _device_paths(), abi)
        layers.landlock = True
        if abi < 4:
            layers.warnings.append(f"Landlock ABI {abi} < 4: TCP is not restricted by Landlock")
    try:
        layers.seccomp = layers.no_new_privs and _seccomp_no_sockets(allow_unix=_cuda_present())
    except OSError as exc:
        layers.warnings.append(f"seccomp unavailable: {exc}")
    layers.network = "no-sockets" if layers.seccomp else ("no-tcp" if layers.landlock and abi >= 4 else "open")
    if not layers.seccomp:
        layers.warnings.append("seccomp filter not installed: the model process may create sockets")
    return layers


class Channel:
    """The model process's end of the pipe: JSON lines to the horse."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "w", buffering=1 << 16, closefd=True)

    def send(self, kind: str, **payload: Any) -> None:
        self._file.write(json.dumps({"kind": kind, **payload}, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass


def run_in_sandbox(
    target: Callable[[Channel], Any], policy: Policy, on_message: Callable[[dict[str, Any]], None] | None = None
) -> tuple[Any, SandboxLayers]:
    """Fork a model process, confine it, run target(channel) there; return (what it returned, its layers).

    Fork from a process that has not run multi-threaded torch ops, or with torch set to one thread: libgomp's
    thread pool does not survive fork(), and a child asking it for threads waits forever (the worker's horses
    are forked from a parent that never computes, so their model processes keep every thread).

    target's return value must be JSON. A TaskError it raises (or an allocation failure) comes back as the same
    TaskError here; a crash of the process as a TaskError naming how it died. Messages it sends with
    channel.send(kind, ...) reach on_message in the caller while it runs, as does {"kind": "layers", "layers": ...}
    once the process is confined (so that a caller knows the layers even when target fails).
    """
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the model process: never returns
        # Nothing inherited from the horse is ever collected here: it used gRPC (fetching the inputs), whose
        # channel objects can outlive close() in reference cycles, and freeing one wakes gRPC's poller through
        # an eventfd that _confine closes; the collection after that aborted the process (SIGABRT).
        gc.freeze()
        code = 0
        try:
            os.close(read_fd)
            os.setpgid(0, 0)  # its own process group, which seccomp keeps whole: the horse kills it at the end
            channel = Channel(write_fd)
            try:
                layers = _confine(policy, [write_fd])
                for warning in layers.warnings:
                    log.warning("sandbox: %s", warning)
                channel.send("layers", layers=asdict(layers))
                channel.send("result", value=target(channel))
            except BaseException as exc:  # noqa: BLE001 - everything goes back to the horse as data
                error = exc if isinstance(exc, TaskError) else memory_error(exc)
                if error is not None:
                    channel.send("error", error=error.to_dict())
                else:
                    channel.send("crash", message=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            channel.close()
        except BaseException:  # noqa: BLE001 - the pipe itself broke
            code = 70
        finally:
            os._exit(code)

    os.close(write_fd)
    layers, value, outcome = SandboxLayers(), None, None
    try:
        for message in _read_lines(read_fd, pid):
            kind = message.get("kind")
            if kind == "layers":
                layers = SandboxLayers(**message["layers"])
                log.info("model process %d sandboxed in %.3fs: %s", pid, time.monotonic() - started, message["layers"])
                if on_message is not None:
                    on_message(message)
            elif kind in ("result", "error", "crash"):
                outcome = message
            elif on_message is not None:
                on_message(message)
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # a protocol error or a failing on_message: the process's work is lost anyway
        raise
    finally:
        os.close(read_fd)
        _, status, usage = os.wait4(pid, 0)
        try:
            os.killpg(pid, signal.SIGKILL)  # whatever the model process started and left behind
        except (ProcessLookupError, PermissionError):
            pass
    if os.WIFSIGNALED(status):
        raise _death(os.WTERMSIG(status), usage.ru_utime + usage.ru_stime, policy)
    if outcome is None:
        raise TaskError(f"the model process exited ({os.waitstatus_to_exitcode(status)}) without a result", reason="MODEL_PROCESS_EXITED")
    if outcome["kind"] == "error":
        raise _task_error(outcome["error"])
    if outcome["kind"] == "crash":
        raise ModelProcessCrash(outcome.get("message", ""), outcome.get("traceback", ""))
    return outcome.get("value"), layers


class ModelProcessCrash(Exception):
    """An unexpected exception inside the model process (a bug in a task): the horse records it as TASK_CRASHED."""

    def __init__(self, message: str, trace: str) -> None:
        super().__init__(message)
        self.trace = trace


def _task_error(raw: dict[str, Any]) -> TaskError:
    error = TaskError(str(raw.get("message", "")), reason=str(raw["reason"]) if raw.get("reason") else None)
    error.code = str(raw.get("code") or "INTERNAL")
    return error


def _death(signum: int, cpu_seconds: float, policy: Policy) -> TaskError:
    name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else f"SIG{signum}"
    if signum == signal.SIGXCPU or (signum == signal.SIGKILL and policy.cpu_seconds and cpu_seconds >= policy.cpu_seconds):
        return ResourceExhausted(f"the model used more CPU time than a job may ({policy.cpu_seconds} s)", reason="CPU_LIMIT")
    if signum == signal.SIGKILL:
        return ResourceExhausted(
            "the model process was killed (SIGKILL), most likely by the kernel's out-of-memory killer: it needed more "
            "memory than the job may use; use a smaller input, batch or model",
            reason="MEMORY_LIMIT",
        )
    if signum == signal.SIGXFSZ:
        return ResourceExhausted("a task wrote a file larger than a job may", reason="FILE_SIZE_LIMIT")
    error = TaskError(f"the model process died of {name}", reason=f"MODEL_PROCESS_{name}")
    error.code = "ABORTED"
    return error


def _read_lines(fd: int, pid: int) -> Iterator[dict[str, Any]]:
    """The messages on the pipe until it closes or the model process exits (a process it started may hold the
    pipe open: the horse must not wait for that one)."""
    pidfd = os.pidfd_open(pid)
    buffer = b""
    try:
        while True:
            ready, _, _ = select.select([fd, pidfd], [], [])
            exited = pidfd in ready and fd not in ready
            if exited:
                os.set_blocking(fd, False)
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                chunk = b""
            if exited and chunk:  # what it wrote before exiting: read on until the pipe is empty
                os.set_blocking(fd, True)
            if not chunk:
                return
            buffer += chunk
            if len(buffer) > MESSAGE_BYTES:
                raise TaskError("the model process sent an oversized message", reason="MODEL_PROCESS_PROTOCOL")
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                try:
                    message = json.loads(line)
                except ValueError:
                    raise TaskError("the model process sent a malformed message", reason="MODEL_PROCESS_PROTOCOL") from None
                if isinstance(message, dict):
                    yield message
    finally:
        os.close(pidfd)
