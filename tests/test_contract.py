"""The service-worker contract (kernelscope.contract): what the service enqueues is what the worker reads, and a
manifest the service cannot read is a clear BAD_MANIFEST, not a crash."""

from __future__ import annotations

import json

import pytest
from kernelscope import contract
from kernelscope.v1 import common_pb2, datasets_pb2, jobs_pb2, models_pb2, tasks_pb2, worker_pb2


def test_the_spec_the_service_enqueues_is_the_spec_the_worker_reads() -> None:
    from service.jobs import job_spec

    model = models_pb2.Model(
        id="mdl_x", name="c3d", format=models_pb2.TORCH_EXPORT, sha256="ab" * 32, size_bytes=5 * 2**33,
        input_spec=common_pb2.InputSpec(shape=[3, 8, 32, 32], value_max=1.0, mean=[0.5] * 3, std=[0.25] * 3),
    )
    dataset = datasets_pb2.Dataset(id="ds_y", sha256="cd" * 32, size_bytes=10)
    task = tasks_pb2.Task(name="kernel_viz", kernel_viz=tasks_pb2.KernelVizOptions(layers=["conv1"], steps=8))
    raw = job_spec("job_1", model, dataset, [task, tasks_pb2.Task(name="describe", describe=tasks_pb2.DescribeOptions())])

    spec = contract.spec_from_json(json.loads(json.dumps(raw)))  # through the queue's JSON
    assert spec.job_id == "job_1" and spec.model == model and spec.dataset == dataset
    assert [t.name for t in spec.tasks] == ["kernel_viz", "describe"]
    assert contract.task_options(spec.tasks[0]) == {"layers": ["conv1"], "steps": 8}
    assert contract.task_options(spec.tasks[1]) == {}
    assert contract.input_spec_dict(spec.model.input_spec) == {
        "shape": [3, 8, 32, 32], "dtype": "", "value_min": 0.0, "value_max": 1.0, "mean": [0.5] * 3, "std": [0.25] * 3}
    assert not contract.spec_from_json(job_spec("job_2", model, None, [task])).HasField("dataset")


def test_a_manifest_round_trips_and_a_broken_one_is_named() -> None:
    from workers.job import task_result

    results = [
        task_result({"task": "tconv_stats", "summary": {"layers": [1.5]}, "error": None, "duration_seconds": 0.25},
                    [{"name": "a.png", "media_type": "image/png", "size_bytes": 3, "sha256": "00", "task": "tconv_stats"}]),
        task_result({"task": "kernel_viz", "summary": None, "error": {"code": "FAILED_PRECONDITION", "reason": "UNKNOWN_LAYER",
                                                                       "message": "no layer"}}, []),
    ]
    manifest = worker_pb2.JobManifest(results=results, worker="host")
    back = contract.manifest_from_json(json.loads(json.dumps(contract.to_json(manifest))))
    assert back == manifest
    assert json.loads(back.results[0].summary_json) == {"layers": [1.5]} and back.results[0].artifacts[0].name == "a.png"
    assert back.results[1].error.reason == "UNKNOWN_LAYER" and not back.results[1].summary_json
    with pytest.raises(contract.BadManifest, match="not a manifest"):
        contract.manifest_from_json(["results"])
    with pytest.raises(contract.BadManifest, match="does not parse"):
        contract.manifest_from_json({"results": "three"})


def test_the_service_shows_a_broken_manifest_as_bad_manifest() -> None:
    from service.job_state import apply_manifest

    job = jobs_pb2.Job(tasks=[tasks_pb2.Task(name="describe")])
    apply_manifest(job, {"results": [{"task": 7, "summary_json": {"not": "text"}}]})
    assert job.state == jobs_pb2.FAILED and (job.error.code, job.error.reason) == ("INTERNAL", "BAD_MANIFEST")


def test_an_error_that_says_no_more_reads_the_same_in_the_worker_and_the_service() -> None:
    from service.job_state import apply_manifest
    from workers.job import task_result

    reported = task_result({"task": "kernel_viz", "error": "it broke"}, [])
    assert (reported.error.code, reported.error.reason, reported.error.message) == ("UNKNOWN", "TASK_FAILED", "it broke")
    job = jobs_pb2.Job(tasks=[tasks_pb2.Task(name="kernel_viz")])
    bare = worker_pb2.JobManifest(results=[jobs_pb2.TaskResult(task="kernel_viz", error=common_pb2.ErrorDetail(message="it broke"))])
    apply_manifest(job, contract.to_json(bare))
    assert job.state == jobs_pb2.FAILED
    assert (job.error.code, job.error.reason, job.error.message) == (contract.UNKNOWN_CODE, contract.TASK_FAILED, "it broke")
