"""GrpcTransport against an in-process gRPC server (real channel, real RpcErrors): every call carries its deadline
and the bearer token, and every gRPC error comes out as the sdk error of its status code, with the service's
reason and message. MockTransport's contract is what tests/sdk/test_client.py runs the client on."""

from __future__ import annotations

from concurrent import futures
from typing import Any, Iterator

import grpc
import pytest

import sdk
from kernelscope.v1 import jobs_pb2, models_pb2
from sdk.transport import REASON_METADATA_KEY, GrpcTransport

SERVICE = "kernelscope.v1.KernelScope"


class Refusal(Exception):
    """A scripted outcome: the server aborts the call with this status, details and reason."""

    def __init__(self, code: grpc.StatusCode, details: str = "", reason: str = "") -> None:
        super().__init__(details)
        self.code, self.details, self.reason = code, details, reason


class FakeService:
    """GetJob, CreateJob, WatchJob and UploadModel answered from `script` (per method: replies or Refusals; a
    WatchJob reply is a list of jobs, a Refusal among them ends the stream); each call's request, metadata and
    deadline are recorded."""

    def __init__(self) -> None:
        self.script: dict[str, list[Any]] = {}
        self.calls: list[tuple[str, Any, dict[str, str], float | None]] = []

    def _next(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls.append((method, request, dict(context.invocation_metadata()), context.time_remaining()))
        return self._answer(self.script[method].pop(0), context)

    @staticmethod
    def _answer(outcome: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(outcome, Refusal):
            if outcome.reason:
                context.set_trailing_metadata(((REASON_METADATA_KEY, outcome.reason),))
            context.abort(outcome.code, outcome.details)
        return outcome

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(method: str) -> Any:
            return lambda request, context: self._next(method, request, context)

        def watch(request: Any, context: grpc.ServicerContext) -> Iterator[jobs_pb2.Job]:
            for outcome in self._next("WatchJob", request, context):
                yield self._answer(outcome, context)

        def upload(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return self._next("UploadModel", list(requests), context)

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "GetJob": grpc.unary_unary_rpc_method_handler(
                    unary("GetJob"), jobs_pb2.GetJobRequest.FromString, jobs_pb2.Job.SerializeToString
                ),
                "CreateJob": grpc.unary_unary_rpc_method_handler(
                    unary("CreateJob"), jobs_pb2.CreateJobRequest.FromString, jobs_pb2.Job.SerializeToString
                ),
                "WatchJob": grpc.unary_stream_rpc_method_handler(
                    watch, jobs_pb2.WatchJobRequest.FromString, jobs_pb2.Job.SerializeToString
                ),
                "UploadModel": grpc.stream_unary_rpc_method_handler(
                    upload, models_pb2.UploadModelRequest.FromString, models_pb2.Model.SerializeToString
                ),
            },
        )


@pytest.fixture
def fake() -> Iterator[tuple[FakeService, str]]:
    service = FakeService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def test_every_call_carries_its_deadline_and_the_bearer_token_and_a_retry_keeps_one_request_id(fake: Any) -> None:
    service, target = fake
    unavailable = Refusal(grpc.StatusCode.UNAVAILABLE, "restarting")
    service.script["CreateJob"] = [unavailable, unavailable, jobs_pb2.Job(id="job_1", state=jobs_pb2.QUEUED)]
    with sdk.Client(target, token="t0ken", retry_seconds=5) as client:
        assert client.create_job("mdl_x", ["tconv_stats"]).id == "job_1"
    request_ids = {call[1].request_id for call in service.calls}
    assert len(service.calls) == 3 and len(request_ids) == 1 and request_ids != {""}
    assert all(call[2]["authorization"] == "Bearer t0ken" for call in service.calls)
    deadlines = [call[3] for call in service.calls]  # as the server sees them (gRPC rounds them up a little)
    assert all(d is not None and 0 < d <= client.timeout + 1 for d in deadlines), deadlines


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, sdk.InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, sdk.NotFound),
        (grpc.StatusCode.FAILED_PRECONDITION, sdk.FailedPrecondition),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, sdk.ResourceExhausted),
        (grpc.StatusCode.DEADLINE_EXCEEDED, sdk.DeadlineExceeded),
        (grpc.StatusCode.UNAVAILABLE, sdk.Unavailable),
        (grpc.StatusCode.DATA_LOSS, sdk.ApiError),  # no class of its own: the base, with the code kept
    ],
)
def test_a_grpc_error_is_the_sdk_error_of_its_code_with_reason_and_message(fake: Any, code: grpc.StatusCode, error: type) -> None:
    service, target = fake
    service.script["GetJob"] = [Refusal(code, "no such job", reason="JOB_NOT_FOUND")]
    transport = GrpcTransport(target)
    try:
        with pytest.raises(error) as raised:
            transport.unary("GetJob", jobs_pb2.GetJobRequest(job_id="job_1"), timeout=10)
    finally:
        transport.close()
    assert type(raised.value) is error and raised.value.code == code
    assert raised.value.reason == "JOB_NOT_FOUND" and "no such job" in str(raised.value)
    assert raised.value.__cause__ is None and not isinstance(raised.value, grpc.RpcError)


def test_a_stream_broken_mid_way_raises_the_sdk_error_after_the_replies_before_it(fake: Any) -> None:
    service, target = fake
    running = jobs_pb2.Job(id="job_1", state=jobs_pb2.RUNNING)
    service.script["WatchJob"] = [[running, Refusal(grpc.StatusCode.UNAVAILABLE, "going away")]]
    transport = GrpcTransport(target, token="t0ken")
    received: list[jobs_pb2.Job] = []
    try:
        stream = transport.stream("WatchJob", jobs_pb2.WatchJobRequest(job_id="job_1"), timeout=10)
        assert service.calls == []  # the call starts at the first next()
        with pytest.raises(sdk.Unavailable, match="going away"):
            for job in stream:
                received.append(job)
    finally:
        transport.close()
    assert received == [running] and service.calls[0][2]["authorization"] == "Bearer t0ken"


def test_an_upload_arrives_as_its_header_then_one_chunk_message_a_piece(fake: Any) -> None:
    service, target = fake
    service.script["UploadModel"] = [models_pb2.Model(id="mdl_new")]
    header = models_pb2.UploadModelRequest(header=models_pb2.ModelHeader(name="m", size_bytes=5))
    transport = GrpcTransport(target)
    try:
        assert transport.upload("UploadModel", header, [b"abc", memoryview(b"de")], timeout=10).id == "mdl_new"
    finally:
        transport.close()
    assert service.calls[0][1] == [header, models_pb2.UploadModelRequest(chunk=b"abc"), models_pb2.UploadModelRequest(chunk=b"de")]
