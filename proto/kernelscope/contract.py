"""The service-worker contract: a job's JobSpec and JobManifest (worker.proto), to and from the JSON RQ keeps, and how an
error travels (its ErrorDetail defaults, the trailing metadata key of its reason).

Why one module: the service writes the spec and reads the manifest, the worker's job function reads the spec and
writes the manifest, and the tests' fake worker does what the worker does; each goes through these functions, so
the JSON on the queue has one shape. Proto3 JSON with the proto field names; a singular message field that is
unset (a job without a dataset, a manifest without an error) is absent from it.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from kernelscope.v1 import common_pb2, tasks_pb2, worker_pb2


class BadManifest(ValueError):
    """The job function returned something that is not a JobManifest."""


def to_json(message: Message) -> dict[str, Any]:
    """A spec or manifest as the JSON that RQ stores."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def spec_from_json(raw: dict[str, Any]) -> worker_pb2.JobSpec:
    return json_format.ParseDict(raw, worker_pb2.JobSpec(), ignore_unknown_fields=True)


def manifest_from_json(raw: Any) -> worker_pb2.JobManifest:
    """The manifest a job function returned; BadManifest when it is not one."""
    if not isinstance(raw, dict):
        raise BadManifest(f"the worker returned {type(raw).__name__}, not a manifest")
    try:
        return json_format.ParseDict(raw, worker_pb2.JobManifest(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise BadManifest(f"the worker's manifest does not parse: {str(exc)[:300]}") from None


def task_options(task: tasks_pb2.Task) -> dict[str, Any]:
    """A task's options as the analyses read them: JSON with proto field names, unset fields absent."""
    return json_format.MessageToDict(getattr(task, task.name), preserving_proto_field_name=True)


def input_spec_dict(spec: common_pb2.InputSpec) -> dict[str, Any]:
    """An InputSpec as the model loader reads it: every field present (0.0 and [] where unset)."""
    return {
        "shape": [int(s) for s in spec.shape],
        "dtype": spec.dtype,
        "value_min": float(spec.value_min),
        "value_max": float(spec.value_max),
        "mean": [float(v) for v in spec.mean],
        "std": [float(v) for v in spec.std],
    }


# The trailing metadata key that carries a refusal's reason (UPPER_SNAKE) on every RPC: the service sets it, the SDK
# and the workers read it.
REASON_METADATA_KEY = "kernelscope-reason"

# What an error that says no more is read as, by the worker that reports it and the service that stores it.
UNKNOWN_CODE = "UNKNOWN"
TASK_FAILED = "TASK_FAILED"


def error(code: str, reason: str, message: str) -> common_pb2.ErrorDetail:
    """An ErrorDetail; an empty code or reason reads as UNKNOWN_CODE / TASK_FAILED (the one place they default)."""
    return common_pb2.ErrorDetail(code=code or UNKNOWN_CODE, reason=reason or TASK_FAILED, message=message)


def timed_out(exc: BaseException) -> worker_pb2.JobManifest:
    """The manifest of a job its queue stopped at the job's timeout (RQ raises rq.timeouts.JobTimeoutException
    inside the job function). Why here: the job function returns it, so the service reads DEADLINE_EXCEEDED /
    JOB_TIMEOUT from the typed manifest instead of matching the exception's text in RQ's failure record. It
    names no worker: the service keeps RQ's worker name for the job, as for any job that did not finish."""
    manifest = worker_pb2.JobManifest()
    manifest.error.CopyFrom(
        error("DEADLINE_EXCEEDED", "JOB_TIMEOUT", f"the job ran past its timeout: {type(exc).__module__}.{type(exc).__qualname__}: {exc}")
    )
    return manifest
