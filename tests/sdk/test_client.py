"""The client through a swapped transport (no network): only UNAVAILABLE is retried, every call has a
deadline, errors keep their reason, and a retried CreateJob keeps one request_id."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

import sdk
from kernelscope.v1 import jobs_pb2, models_pb2


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "", reason: str = "") -> None:
        self._code, self._details, self._reason = code, details, reason

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("kernelscope-reason", self._reason),) if self._reason else ()


class ScriptedStub:
    """Each RPC pops the next scripted outcome (an exception to raise or a reply) and records its call."""

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = script
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def rpc(request: Any, **kwargs: Any) -> Any:
            self.calls.append((name, request, kwargs))
            outcome = self.script[name].pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        return rpc


class FakeTransport:
    def __init__(self, stub: ScriptedStub) -> None:
        self._stub = stub

    def stub(self) -> ScriptedStub:
        return self._stub

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer t0ken"),)

    def close(self) -> None:
        pass


def _client(script: dict[str, list[Any]]) -> tuple[sdk.Client, ScriptedStub]:
    stub = ScriptedStub(script)
    return sdk.Client(transport=FakeTransport(stub), retry_seconds=5), stub


def test_unavailable_is_retried_and_one_request_id_is_kept() -> None:
    job = jobs_pb2.Job(id="job_1", state=jobs_pb2.QUEUED)
    client, stub = _client({"CreateJob": [FakeRpcError(grpc.StatusCode.UNAVAILABLE), FakeRpcError(grpc.StatusCode.UNAVAILABLE), job]})
    assert client.create_job("mdl_x", ["tconv_stats"]).id == "job_1"
    request_ids = {call[1].request_id for call in stub.calls}
    assert len(stub.calls) == 3 and len(request_ids) == 1 and request_ids != {""}
    assert all(call[2]["timeout"] > 0 and call[2]["metadata"] == (("authorization", "Bearer t0ken"),) for call in stub.calls)


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, sdk.InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, sdk.NotFound),
        (grpc.StatusCode.FAILED_PRECONDITION, sdk.FailedPrecondition),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, sdk.ResourceExhausted),
        (grpc.StatusCode.DEADLINE_EXCEEDED, sdk.DeadlineExceeded),
    ],
)
def test_other_errors_are_not_retried_and_keep_their_reason(code: grpc.StatusCode, error: type) -> None:
    client, stub = _client({"GetJob": [FakeRpcError(code, "no such job", reason="JOB_NOT_FOUND"), jobs_pb2.Job()]})
    with pytest.raises(error) as raised:
        client.get_job("job_1")
    assert raised.value.reason == "JOB_NOT_FOUND" and "no such job" in str(raised.value)
    assert len(stub.calls) == 1


def test_unavailable_past_the_retry_budget_is_raised() -> None:
    client, stub = _client({"GetModel": [FakeRpcError(grpc.StatusCode.UNAVAILABLE)] * 1000})
    client.retry_seconds = 0.3
    with pytest.raises(sdk.Unavailable):
        client.get_model("mdl_x")
    assert len(stub.calls) >= 2


def test_known_bytes_are_not_sent_again_unless_the_metadata_differs() -> None:
    """Only a record with these bytes and exactly this header is reused; another format, input spec, name or
    architecture is uploaded as its own record (the service would otherwise keep the old metadata)."""
    import hashlib

    from sdk.client import model_id

    data = b"\x08\x07" + b"onnx-ish bytes"
    sha = hashlib.sha256(data).hexdigest()
    header = models_pb2.ModelHeader(name="m", format=models_pb2.ONNX, size_bytes=len(data), sha256=sha)
    known = models_pb2.Model(id=model_id(header), name="m", sha256=sha, format=models_pb2.ONNX, size_bytes=len(data))
    client, stub = _client({"GetModel": [known] * 4, "UploadModel": [models_pb2.Model(id="new")] * 3})
    assert client.upload_model(data, format="onnx", name="m").id == known.id
    assert [c[0] for c in stub.calls] == ["GetModel"]
    assert stub.calls[0][1].model_id == known.id
    assert client.upload_model(data, format="torchscript", name="m").id == "new"
    assert client.upload_model(data, format="onnx", name="m", input_spec={"mean": [0.5], "std": [0.25]}).id == "new"
    assert client.upload_model(data, format="onnx", name="m", architecture="c3d_small").id == "new"
    assert [c[0] for c in stub.calls][1:] == ["GetModel", "UploadModel"] * 3
    uploaded = [c[1] for c in stub.calls if c[0] == "UploadModel"]
    assert all(model_id(next(iter(u)).header) != known.id for u in uploaded)


def test_watch_reconnects_across_unavailable_and_ends_on_the_terminal_state() -> None:
    running = jobs_pb2.Job(id="job_1", state=jobs_pb2.RUNNING, progress=jobs_pb2.Progress(fraction=0.5))
    done = jobs_pb2.Job(id="job_1", state=jobs_pb2.SUCCEEDED)

    def broken_stream() -> Any:
        yield running
        raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)

    client, stub = _client({"WatchJob": [broken_stream(), iter([running, done])]})
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
    client, stub = _client({})
    with pytest.raises(sdk.InvalidArgument, match="input_spec cannot change model mdl_abc") as refused:
        client.analyze("mdl_abc", tasks=["kernel_viz"], input_spec={"mean": [0.5], "std": [0.25]})
    assert refused.value.reason == "MODEL_ID_WITH_OPTIONS" and stub.calls == []
    with pytest.raises(sdk.InvalidArgument, match="architecture cannot change"):
        client.describe(models_pb2.Model(id="mdl_abc"), architecture="c3d_small")
