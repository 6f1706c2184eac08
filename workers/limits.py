"""Resource limits and a clean environment for the process that loads an untrusted model.

Call both in the job's work-horse (the forked child RQ runs a job in) before touching the model
file, never in the long-lived worker parent.

Why RLIMIT_DATA and not RLIMIT_AS: RLIMIT_AS caps *virtual* address space, and torch with CUDA
reserves tens of GiB of address space it never touches (CUDA's unified address space, the
caching allocator's PROT_NONE reservations), so an address-space cap that is safe for the job
breaks CUDA initialisation. RLIMIT_DATA (Linux >= 4.7) counts only private writable mappings:
the heap and every anonymous mmap a tensor lives in, which is the memory a hostile file can make
us allocate. CPU tensors beyond the limit fail with an ordinary RuntimeError ("can't allocate
memory") instead of taking the node down.
"""

from __future__ import annotations

import fnmatch
import os
import resource
from typing import Iterable

# Grace between the soft CPU limit (SIGXCPU, which ends the process) and the hard limit (SIGKILL).
CPU_GRACE_SECONDS = 5

# Environment variables a worker holds that model code must never see (fnmatch patterns).
# The worker token (KERNELSCOPE_WORKER_TOKEN) is the one that matters; the rest are the usual suspects.
SECRET_PATTERNS: tuple[str, ...] = ("*TOKEN*", "*SECRET*", "*PASSWORD*", "*API_KEY*", "*CREDENTIAL*")


def apply_limits(memory_bytes: int | None, cpu_seconds: int | None) -> None:
    """Cap this process's private memory (RLIMIT_DATA) and CPU time (RLIMIT_CPU); None leaves one as is.

    Limits can only be lowered: a value above the current hard limit is clamped to it.
    """
    if memory_bytes is not None:
        _lower(resource.RLIMIT_DATA, int(memory_bytes), int(memory_bytes))
    if cpu_seconds is not None:
        _lower(resource.RLIMIT_CPU, int(cpu_seconds), int(cpu_seconds) + CPU_GRACE_SECONDS)


def scrub_environment(names: Iterable[str] = SECRET_PATTERNS) -> list[str]:
    """Remove every environment variable matching one of `names` (exact names or fnmatch patterns).

    Returns the names removed, sorted, so the caller can log what was hidden (never the values).
    """
    patterns = list(names)
    removed = sorted(k for k in os.environ if any(fnmatch.fnmatchcase(k, p) for p in patterns))
    for key in removed:
        os.environ.pop(key, None)
    return removed


def _lower(kind: int, soft: int, hard: int) -> None:
    cur_soft, cur_hard = resource.getrlimit(kind)
    if cur_hard != resource.RLIM_INFINITY:
        hard = min(hard, cur_hard)
        soft = min(soft, hard)
    if cur_soft != resource.RLIM_INFINITY:
        soft = min(soft, cur_soft)
    resource.setrlimit(kind, (soft, hard))
