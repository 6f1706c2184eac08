"""A new user's first hour with the `kernelscope` command line (issue 16), against the real stack: nothing silently
wrong (metadata of a re-upload, missing normalisation), nothing hidden (why a job failed, the findings), and every
user mistake a one-line error that says how to fix it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHEAP_TCONV = '--task=tconv_stats:{"layers": ["conv1"], "restarts": 0, "fit_steps": 10}'
CHEAP_VIZ = '--task=kernel_viz:{"layers": ["conv1"], "channels": [0, 1], "steps": 8}'
SPEC = '{"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}'


def _cli(stack, *args: str, timeout: float = 300, cwd: Path | None = None, target: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    where = ["--target", target or stack.target] if stack is not None or target else []
    return subprocess.run(
        [sys.executable, "-m", "sdk.cli", *where, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a refused command: exactly one line starting `error:` (or argparse's usage + error), no traceback."""
    assert "Traceback" not in done.stderr and "ParseError" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_reupload_with_an_input_spec_takes_effect_and_a_job_without_one_warns(stack, c3d_pt2: Path) -> None:  # noqa: ANN001
    """The README's order: describe (no spec), then analyze with --input-spec. The job must run with the spec (it was
    silently the first upload's), and a job without one says the model was fed unnormalised values."""
    assert _cli(stack, "describe", str(c3d_pt2)).returncode == 0
    raw = _cli(stack, "analyze", str(c3d_pt2), CHEAP_VIZ, "--no-progress")
    assert raw.returncode == 0, raw.stderr
    assert re.search(r"^warning: no input_spec mean/std was given: kernel_viz fed the model raw values", raw.stdout, re.M), raw.stdout
    normalised = _cli(stack, "analyze", str(c3d_pt2), CHEAP_VIZ, "--input-spec", SPEC, "--json", "--no-progress")
    assert normalised.returncode == 0, normalised.stderr
    result = json.loads(normalised.stdout)
    assert result["input_spec"]["mean"] == [0.5] * 3 and result["input_spec"]["std"] == [0.25] * 3
    assert result["warnings"] == [] and result["model_name"] == c3d_pt2.name
    shown = json.loads(_cli(stack, "jobs", "show", result["job_id"]).stdout)
    assert shown["input_spec"]["std"] == [0.25] * 3
    listed = _cli(stack, "models", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    # One blob, two records. The stack is shared: other tests' files of the same name are other blobs.
    digest = hashlib.sha256(c3d_pt2.read_bytes()).hexdigest()
    records = [m for m in json.loads(listed.stdout) if m["name"] == c3d_pt2.name and m["sha256"] == digest]
    assert {tuple(m.get("input_spec", {}).get("mean", [])) for m in records} >= {(), (0.5, 0.5, 0.5)}
    table = _cli(stack, "models", "list")
    assert table.returncode == 0 and result["model_id"] in table.stdout and "mean [0.5, 0.5, 0.5]" in table.stdout


def test_analyze_prints_findings_per_task_and_json_carries_them(stack, c3d_pt2: Path) -> None:  # noqa: ANN001
    done = _cli(stack, "analyze", str(c3d_pt2), CHEAP_TCONV, CHEAP_VIZ, "--input-spec", SPEC, "--no-progress")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "findings:" in out and "inputs normalised with mean [0.5, 0.5, 0.5], std [0.25, 0.25, 0.25]" in out
    assert re.search(r"conv1: \d+ of 16 filters 3T-explainable \(\d+%, residual < 0\.2\); best residual \d\.\d\d, mean \d\.\d\d", out), out
    assert re.search(r"conv1: \d of 2 channels move.*; \d dead", out), out
    as_json = json.loads(_cli(stack, "analyze", str(c3d_pt2), CHEAP_TCONV, "--json", "--no-progress").stdout)
    layer = as_json["findings"]["tconv_stats"]["layers"][0]
    assert layer["layer"] == "conv1" and layer["filters"] == 16 and 0 <= layer["explainable_share"] <= 1


def test_a_failed_job_prints_the_services_reason_and_message(stack, tmp_path: Path) -> None:  # noqa: ANN001
    import torch

    from workers.samples.models import C3DSmall

    pickled = tmp_path / "pickled.pt"
    torch.save(C3DSmall(), pickled)
    done = _cli(stack, "analyze", str(pickled), CHEAP_TCONV, "--no-progress")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "FAILED" in done.stdout and "PICKLED_MODULE" in done.stdout, done.stdout
    assert "torch.export" in done.stdout, done.stdout  # the service's message says how to export instead


def test_no_server_fails_in_seconds_with_the_ways_to_get_one() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    done = _cli(None, "jobs", "list", target=f"127.0.0.1:{port}", timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 2 and elapsed < 30, (elapsed, done.stderr)
    line = _one_line_error(done)
    assert f"127.0.0.1:{port}" in line and "kernelscope up" in line and "--local" in line and "Client.local()" in line


def test_user_mistakes_are_one_line_errors(stack, c3d_pt2: Path) -> None:  # noqa: ANN001
    misspelled = _cli(stack, "analyze", str(c3d_pt2), '--task=kernel_viz:{"step": 8}', "--no-progress")
    assert misspelled.returncode == 2
    assert "task 'kernel_viz' has no option 'step'; its options: layers, channels, steps" in _one_line_error(misspelled)
    bad_type = _cli(stack, "analyze", str(c3d_pt2), '--task=kernel_viz:{"steps": "many"}', "--no-progress")
    assert bad_type.returncode == 2 and "options of task 'kernel_viz'" in _one_line_error(bad_type)
    bad_spec = _cli(stack, "analyze", str(c3d_pt2), "--input-spec", '{"mea": [0.5]}', "--no-progress")
    assert bad_spec.returncode == 2 and "--input-spec has no key 'mea'" in _one_line_error(bad_spec)
    bogus = _cli(stack, "jobs", "list", "--state", "bogus")
    assert bogus.returncode == 2 and "invalid choice: 'bogus'" in _one_line_error(bogus)
    missing = _cli(stack, "analyze", "no/such/model.pt2", "--no-progress")
    assert missing.returncode == 2 and "no model file at no/such/model.pt2" in _one_line_error(missing)


def test_version_and_help_list_tasks_with_their_defaults() -> None:
    version = _cli(None, "--version")
    assert version.returncode == 0 and re.fullmatch(r"kernelscope \S+\n", version.stdout)
    helped = _cli(None, "analyze", "--help")
    assert helped.returncode == 0
    for expected in ("kernel_viz:", "tconv_stats:", "class_filters:", "residual_threshold   0.2", "steps                256", "--input-spec"):
        assert expected in helped.stdout, expected


def test_short_job_ids_are_accepted_and_cancel_prints_the_state_after_cancelling(stack, c3d_pt2: Path) -> None:  # noqa: ANN001
    submitted = _cli(stack, "analyze", str(c3d_pt2), '--task=kernel_viz:{"layers": ["conv2"], "steps": 5000}', "--no-wait", "--input-spec", SPEC)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    short = job_id[:12]  # what the progress bar shows
    shown = _cli(stack, "jobs", "show", short)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == job_id
    cancelled = _cli(stack, "jobs", "cancel", short)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"job {job_id}: CANCELLED", cancelled.stdout
    again = _cli(stack, "jobs", "cancel", job_id)
    assert again.returncode == 0 and again.stdout.strip() == f"job {job_id}: CANCELLED", again.stdout
    done = json.loads(_cli(stack, "analyze", str(c3d_pt2), CHEAP_TCONV, "--json", "--no-progress").stdout)["job_id"]
    late = _cli(stack, "jobs", "cancel", done)
    assert late.returncode == 0 and late.stdout.strip() == f"job {done}: SUCCEEDED (it ended before the cancel; nothing was cancelled)"


def test_jobs_show_into_a_closed_pipe_is_quiet(stack, c3d_pt2: Path) -> None:  # noqa: ANN001
    """`jobs show JOB | head`: the reader goes away; no traceback, no 'Exception ignored'."""
    done = _cli(stack, "analyze", str(c3d_pt2), CHEAP_TCONV, "--json", "--no-progress")
    job_id = json.loads(done.stdout)["job_id"]
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written: every write is EPIPE, deterministically
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "sdk.cli", "--target", stack.target, "jobs", "show", job_id],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
        )
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 141


def test_analyze_local_without_out_keeps_the_results(c3d_pt2: Path, tmp_path: Path) -> None:
    done = _cli(None, "analyze", str(c3d_pt2), CHEAP_TCONV, "--local", "--no-progress", cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    job_id = re.search(r"^job (job_[0-9a-f]+): SUCCEEDED", done.stdout, re.M).group(1)  # type: ignore[union-attr]
    kept = tmp_path / "kernelscope-results" / job_id
    assert f"in kernelscope-results/{job_id}" in done.stderr
    assert json.loads((kept / "job.json").read_text())["job_id"] == job_id
    assert any(kept.rglob("*.json")) and len(list(kept.rglob("*"))) > 2


@pytest.mark.parametrize("given", ["policy", "flag"])
def test_gate_missing_dataset_names_the_option(stack, c3d_pt2: Path, tmp_path: Path, given: str) -> None:  # noqa: ANN001
    policy = tmp_path / "gate.toml"
    policy.write_text(
        ('dataset = "nope.npz"\n' if given == "policy" else "")
        + 'input_spec = { mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }\n'
        + '[[checks]]\nmetric = "class_filters.accuracy_restricted"\nmin = 0.5\n'
    )
    extra = ["--dataset", str(tmp_path / "missing.npz")] if given == "flag" else []
    done = _cli(stack, "gate", str(c3d_pt2), "--policy", str(policy), *extra)
    assert done.returncode == 2
    line = _one_line_error(done)
    assert "does not exist" in line and "--dataset" in line


def test_gate_policy_input_spec_reaches_the_job(stack, c3d_pt2: Path, tmp_path: Path) -> None:  # noqa: ANN001
    policy = tmp_path / "gate.toml"
    policy.write_text(
        'input_spec = { mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }\n'
        '[tasks.tconv_stats]\nlayers = ["conv1"]\nrestarts = 0\nfit_steps = 10\n'
        '[[checks]]\nmetric = "tconv_stats.zero_filters"\nmax = 0\n'
    )
    report = tmp_path / "gate.json"
    done = _cli(stack, "gate", str(c3d_pt2), "--policy", str(policy), "--json", str(report))
    assert done.returncode == 0, done.stderr
    jobs = json.loads(_cli(stack, "jobs", "list", "--json").stdout)
    newest = max(jobs, key=lambda j: j["create_time"])
    assert newest["input_spec"]["mean"] == [0.5] * 3 and not newest.get("warnings")


def test_architecture_given_after_a_first_upload_without_it_takes_effect(stack, tmp_path: Path) -> None:  # noqa: ANN001
    """Weights alone cannot run kernel_viz; naming the architecture on a second upload of the same file must make it
    runnable (the service kept the first record's empty architecture, so it kept failing)."""
    import torch
    from safetensors.torch import save_file

    from workers.samples.models import C3DSmall

    torch.manual_seed(7)
    weights = tmp_path / "weights.safetensors"
    save_file(C3DSmall().state_dict(), weights)
    bare = _cli(stack, "analyze", str(weights), CHEAP_VIZ, "--no-progress")
    assert bare.returncode == 2 and "architecture" in _one_line_error(bare)
    named = _cli(stack, "analyze", str(weights), CHEAP_VIZ, "--architecture", "c3d_small", "--input-spec", SPEC, "--json", "--no-progress")
    assert named.returncode == 0, (named.stdout, named.stderr)
    result = json.loads(named.stdout)
    assert result["architecture"] == "c3d_small" and result["state"] == "SUCCEEDED"
