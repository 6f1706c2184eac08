"""workers.limits: the work-horse's memory and CPU caps work with torch, and secrets leave its environment.

Each limit is applied in a fresh subprocess (limits are per process and cannot be raised again).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from workers.limits import apply_limits, scrub_environment

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=env)


def test_memory_limit_lets_torch_work_and_stops_a_huge_allocation() -> None:
    result = _run(
        """
        from workers.limits import apply_limits
        apply_limits(memory_bytes=1536 * 2**20, cpu_seconds=None)
        import torch
        torch.set_num_threads(1)
        x = torch.randn(512, 512) @ torch.randn(512, 512)   # ordinary work still runs
        print("small ok", float(x.abs().sum()) > 0)
        try:
            y = torch.ones(int(1e9))                          # 4 GB: more than the limit
            print("huge allocated", y.numel())
        except RuntimeError as exc:
            print("huge refused")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "small ok True" in result.stdout and "huge refused" in result.stdout


def test_cpu_limit_ends_a_runaway_process() -> None:
    result = _run(
        """
        import resource
        from workers.limits import apply_limits
        apply_limits(memory_bytes=None, cpu_seconds=1)
        print(resource.getrlimit(resource.RLIMIT_CPU), flush=True)
        while True:
            pass
        """,
        timeout=60,
    )
    assert result.stdout.strip() == "(1, 6)"
    assert result.returncode == -signal.SIGXCPU


def test_limits_are_only_ever_lowered() -> None:
    result = _run(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_DATA, (2**30, 2**31))
        from workers.limits import apply_limits
        apply_limits(memory_bytes=2**40, cpu_seconds=None)       # above the hard limit: clamped
        print(resource.getrlimit(resource.RLIMIT_DATA))
        apply_limits(memory_bytes=2**29, cpu_seconds=None)
        print(resource.getrlimit(resource.RLIMIT_DATA))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == [f"({2**30}, {2**31})", f"({2**29}, {2**29})"]


def test_scrub_environment_removes_secrets_and_keeps_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELSCOPE_WORKER_TOKEN", "s3cret")
    monkeypatch.setenv("MY_API_KEY", "k")
    monkeypatch.setenv("DB_PASSWORD", "p")
    monkeypatch.setenv("KERNELSCOPE_DEVICE", "cpu")
    removed = scrub_environment()
    assert removed == ["DB_PASSWORD", "KERNELSCOPE_WORKER_TOKEN", "MY_API_KEY"]
    assert "KERNELSCOPE_WORKER_TOKEN" not in os.environ and "MY_API_KEY" not in os.environ
    assert os.environ["KERNELSCOPE_DEVICE"] == "cpu" and "PATH" in os.environ
    monkeypatch.setenv("EXACT_NAME", "x")
    assert scrub_environment(["EXACT_NAME"]) == ["EXACT_NAME"] and "EXACT_NAME" not in os.environ


def test_none_leaves_limits_unchanged() -> None:
    before = resource.getrlimit(resource.RLIMIT_DATA), resource.getrlimit(resource.RLIMIT_CPU)
    apply_limits(None, None)
    assert (resource.getrlimit(resource.RLIMIT_DATA), resource.getrlimit(resource.RLIMIT_CPU)) == before


def test_an_allocation_past_the_memory_limit_is_resource_exhausted() -> None:
    """torch's CPU allocator error under the limit becomes RESOURCE_EXHAUSTED / MEMORY_LIMIT (not a crash)."""
    result = _run(
        """
        from workers.limits import apply_limits
        apply_limits(memory_bytes=1536 * 2**20, cpu_seconds=None)
        import torch
        from workers.errors import memory_error
        try:
            torch.full((int(2e9),), 1.0)                      # 8 GB
        except Exception as exc:
            mapped = memory_error(exc)
            print(type(exc).__name__, mapped.code if mapped else None, mapped.reason if mapped else None)
        print("other", memory_error(RuntimeError("shape mismatch")), memory_error(ValueError("out of memory")))
        """
    )
    assert result.returncode == 0, result.stderr
    assert "RESOURCE_EXHAUSTED MEMORY_LIMIT" in result.stdout, result.stdout
    assert "other None None" in result.stdout
