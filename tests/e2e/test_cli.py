"""The `kernelscope` command line against a running stack: describe, analyze, jobs, download, report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _cli(stack, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    return subprocess.run(
        [sys.executable, "-m", "sdk.cli", "--target", stack.target, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_describe_analyze_jobs_download_report(stack, c3d_pt2: Path, tmp_path: Path) -> None:  # noqa: ANN001
    described = _cli(stack, "describe", str(c3d_pt2))
    assert described.returncode == 0, described.stderr
    assert "conv1" in described.stdout and "Conv3d" in described.stdout and "fc" in described.stdout

    task = '--task=tconv_stats:{"layers": ["conv1"], "restarts": 0, "fit_steps": 10}'
    analyzed = _cli(stack, "analyze", str(c3d_pt2), task, "--json", "--no-progress", "--out", str(tmp_path / "a"))
    assert analyzed.returncode == 0, analyzed.stderr
    result = json.loads(analyzed.stdout)
    assert result["state"] == "SUCCEEDED" and result["tasks"][0]["summary"]["layers"][0]["name"] == "conv1"
    job_id = result["job_id"]
    assert (tmp_path / "a" / "job.json").exists()

    listed = _cli(stack, "jobs", "list")
    assert listed.returncode == 0 and job_id in listed.stdout
    shown = _cli(stack, "jobs", "show", job_id)
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == job_id

    downloaded = _cli(stack, "download", job_id, str(tmp_path / "b"))
    assert downloaded.returncode == 0, downloaded.stderr
    assert sorted(p.name for p in (tmp_path / "b").rglob("*.png")) == sorted(p.name for p in (tmp_path / "a").rglob("*.png"))

    report = tmp_path / "report.html"
    reported = _cli(stack, "report", job_id, "-o", str(report))
    assert reported.returncode == 0, reported.stderr
    assert "<html" in report.read_text()[:500].lower()


def test_a_failing_job_exits_1_and_a_bad_request_exits_2(stack, c3d_pt2: Path) -> None:  # noqa: ANN001
    failing = _cli(stack, "analyze", str(c3d_pt2), '--task=tconv_stats:{"layers": ["nope"]}', "--no-progress")
    assert failing.returncode == 1, (failing.stdout, failing.stderr)
    unknown = _cli(stack, "analyze", str(c3d_pt2), "--task", "no_such_task", "--no-progress")
    assert unknown.returncode == 2 and "valid tasks" in unknown.stderr


@pytest.mark.parametrize("args", [["jobs", "show", "job_does_not_exist"], ["download", "job_nope", "/tmp/x"]])
def test_unknown_ids_are_a_clear_error(stack, args: list[str]) -> None:  # noqa: ANN001
    done = _cli(stack, *args)
    assert done.returncode == 2 and "not" in done.stderr.lower()
