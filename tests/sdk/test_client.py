"""The client through sdk.MockTransport (no network, no gRPC): only UNAVAILABLE is retried, every call has a
deadline, errors keep their reason, and a retried CreateJob keeps one request_id. What the gRPC transport sends
and how it maps gRPC errors to these is tests/sdk/test_transport.py's."""

from __future__ import annotations

from typing import Any

import pytest

import sdk
from kernelscope.v1 import jobs_pb2, models_pb2


class Script:
    """A MockTransport handler: each call pops its method's next scripted outcome (an sdk error to raise, or a reply)."""

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = script

    def __call__(self, method: str, request: Any) -> Any:
        outcome = self.script[method].pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _client(script: dict[str, list[Any]]) -> tuple[sdk.Client, sdk.MockTransport]:
    transport = sdk.MockTransport(Script(script))
    return sdk.Client(transport=transport, retry_seconds=5), transport


def test_unavailable_is_retried_and_one_request_id_is_kept() -> None:
    job = jobs_pb2.Job(id="job_1", state=jobs_pb2.QUEUED)
    client, transport = _client({"CreateJob": [sdk.Unavailable("connection refused"), sdk.Unavailable("connection refused"), job]})
    assert client.create_job("mdl_x", ["tconv_stats"]).id == "job_1"
    request_ids = {call[1].request_id for call in transport.calls}
    assert len(transport.calls) == 3 and len(request_ids) == 1 and request_ids != {""}
    assert all(call[2] > 0 for call in transport.calls)  # the bearer token on each: test_transport's


@pytest.mark.parametrize(
    "error", [sdk.InvalidArgument, sdk.NotFound, sdk.FailedPrecondition, sdk.ResourceExhausted, sdk.DeadlineExceeded]
)
def test_other_errors_are_not_retried_and_keep_their_reason(error: type[sdk.ApiError]) -> None:
    client, transport = _client({"GetJob": [error("no such job", reason="JOB_NOT_FOUND"), jobs_pb2.Job()]})
    with pytest.raises(error) as raised:
        client.get_job("job_1")
    assert raised.value.reason == "JOB_NOT_FOUND" and "no such job" in str(raised.value)
    assert len(transport.calls) == 1


def test_unavailable_past_the_retry_budget_is_raised() -> None:
    client, transport = _client({"GetModel": [sdk.Unavailable("connection refused")] * 1000})
    client.retry_seconds = 0.3
    with pytest.raises(sdk.Unavailable):
        client.get_model("mdl_x")
    assert len(transport.calls) >= 2


def test_known_bytes_are_not_sent_again_unless_the_metadata_differs() -> None:
    """Only a record with these bytes and exactly this header is reused; another format, input spec, name or
    architecture is uploaded as its own record (the service would otherwise keep the old metadata)."""
    import hashlib

    from sdk.client import model_id

    data = b"\x08\x07" + b"onnx-ish bytes"
    sha = hashlib.sha256(data).hexdigest()
    header = models_pb2.ModelHeader(name="m", format=models_pb2.ONNX, size_bytes=len(data), sha256=sha)
    known = models_pb2.Model(id=model_id(header), name="m", sha256=sha, format=models_pb2.ONNX, size_bytes=len(data))
    client, transport = _client({"GetModel": [known] * 4, "UploadModel": [models_pb2.Model(id="new")] * 3})
    assert client.upload_model(data, format="onnx", name="m").id == known.id
    assert [c[0] for c in transport.calls] == ["GetModel"]
    assert transport.calls[0][1].model_id == known.id
    assert client.upload_model(data, format="torchscript", name="m").id == "new"
    assert client.upload_model(data, format="onnx", name="m", input_spec={"mean": [0.5], "std": [0.25]}).id == "new"
    assert client.upload_model(data, format="onnx", name="m", architecture="c3d_small").id == "new"
    assert [c[0] for c in transport.calls][1:] == ["GetModel", "UploadModel"] * 3
    uploaded = [c[1] for c in transport.calls if c[0] == "UploadModel"]
    assert all(model_id(next(iter(u)).header) != known.id for u in uploaded)


def test_watch_reconnects_across_unavailable_and_ends_on_the_terminal_state() -> None:
    running = jobs_pb2.Job(id="job_1", state=jobs_pb2.RUNNING, progress=jobs_pb2.Progress(fraction=0.5))
    done = jobs_pb2.Job(id="job_1", state=jobs_pb2.SUCCEEDED)

    def broken_stream() -> Any:
        yield running
        raise sdk.Unavailable("connection reset")

    client, transport = _client({"WatchJob": [broken_stream(), iter([running, done])]})
    states = [j.state for j in client.watch_job("job_1")]
    assert states == [jobs_pb2.RUNNING, jobs_pb2.RUNNING, jobs_pb2.SUCCEEDED]
    # Job.wait consumes the same stream and returns the Result at the terminal state.
    client2, _ = _client({"WatchJob": [iter([done])]})
    assert sdk.Job(running, client2).wait(progress=False).ok


def test_a_failed_job_raises_job_failed_with_the_partial_result() -> None:
    failed = jobs_pb2.Job(id="job_2", state=jobs_pb2.FAILED)
    failed.error.code, failed.error.reason, failed.error.message = "FAILED_PRECONDITION", "UNKNOWN_LAYER", "no layer named 'x'"
    failed.results.add(task="tconv_stats", summary_json='{"layers": []}')
    client, _ = _client({"WatchJob": [iter([failed])]})
    with pytest.raises(sdk.JobFailed) as raised:
        sdk.Job(failed, client).wait(progress=False)
    assert raised.value.reason == "UNKNOWN_LAYER" and raised.value.result["tconv_stats"] == {"layers": []}


def test_options_with_a_model_id_are_refused_not_ignored() -> None:
    """An id names a record whose input spec, name and architecture are fixed; options given with it would be
    silently dropped, so they are an error before any call."""
    client, transport = _client({})
    with pytest.raises(sdk.InvalidArgument, match="input_spec cannot change model mdl_abc") as refused:
        client.analyze("mdl_abc", tasks=["kernel_viz"], input_spec={"mean": [0.5], "std": [0.25]})
    assert refused.value.reason == "MODEL_ID_WITH_OPTIONS" and transport.calls == []
    with pytest.raises(sdk.InvalidArgument, match="architecture cannot change"):
        client.describe(models_pb2.Model(id="mdl_abc"), architecture="c3d_small")
