"""The whole path, for real: SDK → gRPC → server → Redis/RQ → a separate worker process → artifacts back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sdk
from kernelscope.v1 import jobs_pb2


def test_upload_run_watch_and_fetch(client: sdk.Client, stack, c3d_pt2: Path, tmp_path: Path) -> None:
    model = client.upload_model(c3d_pt2, input_spec={"mean": [0.5] * 3, "std": [0.25] * 3})
    assert model.id.startswith("mdl_") and model.size_bytes == c3d_pt2.stat().st_size
    job = client.create_job(model.id, [{"tconv_stats": {"layers": ["conv1"], "restarts": 1, "fit_steps": 30}}])
    updates = list(client.watch_job(job.id))
    states = [jobs_pb2.JobState.Name(u.state) for u in updates]
    final = updates[-1]
    assert states[-1] == "SUCCEEDED", (states, final.error, [r.error for r in final.results])
    seen_progress = [u.progress for u in updates if u.state == jobs_pb2.RUNNING]
    assert seen_progress, f"no RUNNING update with progress in {states}"
    assert all(0.0 <= p.fraction <= 1.0 for p in seen_progress)
    assert any(p.task == "tconv_stats" for p in seen_progress)

    result = client.result(job.id)
    summary = result["tconv_stats"]
    assert summary, "empty summary"
    paths = result.download(tmp_path / "out")
    assert paths and all(p.stat().st_size > 0 for p in paths)
    pngs = [p for p in paths if p.suffix == ".png"]
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    for p in paths:
        if p.suffix == ".json":
            json.loads(p.read_text())
    recorded = {a.name: a for a in result.artifacts}
    assert {p.relative_to(tmp_path / "out").as_posix() for p in paths} == set(recorded)


def test_the_server_process_never_loads_torch(client: sdk.Client, stack, c3d_pt2: Path) -> None:
    client.analyze(c3d_pt2, tasks=[{"tconv_stats": {"layers": ["conv1"], "restarts": 1, "fit_steps": 10}}], progress=False)
    maps = Path(f"/proc/{stack.server.pid}/maps").read_text()
    assert "libtorch" not in maps, "the server process mapped libtorch"
    worker_maps = Path(f"/proc/{stack.worker_processes[0].pid}/maps").read_text()
    assert "libtorch" in worker_maps, "the check must be able to see torch where it is loaded"


def test_a_task_failure_is_recorded_inside_the_job(client: sdk.Client, c3d_pt2: Path) -> None:
    job = client.analyze(c3d_pt2, tasks=[{"tconv_stats": {"layers": ["no_such_layer"]}}], wait=False)
    with pytest.raises(sdk.JobFailed) as failed:
        job.wait(progress=False)
    assert failed.value.code in ("FAILED_PRECONDITION", "INVALID_ARGUMENT")
    assert "no_such_layer" in str(failed.value)


def test_a_model_deleted_while_its_job_waits_fails_that_job_cleanly(client: sdk.Client, stack, c3d_pt2: Path, tmp_path: Path) -> None:
    import torch

    from workers.samples.models import C3DSmall, export_pt2

    blocker = client.analyze(c3d_pt2, tasks=[{"kernel_viz": {"layers": ["conv3"], "steps": 5000}}], wait=False)
    torch.manual_seed(123)  # fresh bytes: never in the worker's blob cache
    doomed_path = tmp_path / "doomed.pt2"
    export_pt2(C3DSmall().eval(), doomed_path)
    doomed = client.upload_model(doomed_path)
    job = client.create_job(doomed.id, [{"tconv_stats": {"layers": ["conv1"]}}])
    client.delete_model(doomed.id)
    blocker.cancel()
    with pytest.raises(sdk.JobFailed) as failed:
        job.wait(timeout=120, progress=False)
    assert failed.value.code == "NOT_FOUND" and failed.value.reason == "INPUT_UNAVAILABLE", str(failed.value)
    assert client.analyze(c3d_pt2, tasks=[{"tconv_stats": {"layers": ["conv1"], "restarts": 0, "fit_steps": 5}}], progress=False).ok
