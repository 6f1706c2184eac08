"""The SDK waits out the service's per-tenant call caps (RESOURCE_EXHAUSTED TOO_MANY_CALLS / TOO_MANY_STREAMS):
the local stack and open mode run every caller as one tenant, so a script with more waiting threads than the
cap must still see every job end. Quota refusals never clear by waiting and are raised at once."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kernelscope.v1 import jobs_pb2, tasks_pb2

import sdk
from sdk.errors import ResourceExhausted
from service.admission import Admission
from service.errors import ServiceError
from tests.service.helpers import onnx_bytes, upload_model

WAIT_S = 120.0  # bound on every wait for something the server or the SDK does
MAX_STREAMS, MAX_RPCS = 2, 4
WAITERS = 3 * MAX_STREAMS


class Refusals:
    """Counts the admission refusals of a server in this process (Admission.acquire wrapped)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._cond = threading.Condition()
        self.reasons: list[str] = []
        acquire = Admission.acquire

        def counted(admission: Admission, tenant: str, streaming: bool) -> Any:
            try:
                return acquire(admission, tenant, streaming)
            except ServiceError as error:
                with self._cond:
                    self.reasons.append(error.reason)
                    self._cond.notify_all()
                raise

        monkeypatch.setattr(Admission, "acquire", counted)

    def wait(self, count: int, timeout: float = WAIT_S) -> int:
        with self._cond:
            self._cond.wait_for(lambda: len(self.reasons) >= count, timeout)
            return len(self.reasons)


@pytest.mark.parametrize("retry_seconds", [WAIT_S, 1.0], ids=["jobs-end-within-the-retry-budget", "jobs-outlast-the-retry-budget"])
def test_more_client_waits_than_the_tenants_stream_cap_all_complete(
    start_fake_server: Any, run_jobs: Any, monkeypatch: pytest.MonkeyPatch, retry_seconds: float
) -> None:
    """With retry_seconds=1 the jobs are held (no worker runs) 5 s past it: the refused waits poll the job meanwhile
    instead of giving up, as a script's waits must while the tenant's other jobs run for minutes."""
    refusals = Refusals(monkeypatch)
    server = start_fake_server(tenant_max_streams=MAX_STREAMS, tenant_max_rpcs=MAX_RPCS, max_wait_seconds=60.0)
    stub = server.stub()
    model = upload_model(stub, onnx_bytes())
    job_ids = [
        stub.CreateJob(jobs_pb2.CreateJobRequest(model_id=model.id, tasks=[tasks_pb2.Task(name="describe")]), timeout=30).id
        for _ in range(WAITERS)
    ]
    states: dict[str, str] = {}
    errors: dict[str, BaseException] = {}

    def wait(job_id: str) -> None:
        try:
            with sdk.Client(server.address, retry_seconds=retry_seconds) as client:
                states[job_id] = client.get_job(job_id).wait(timeout=WAIT_S, progress=False).job.state
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            errors[job_id] = exc

    threads = [threading.Thread(target=wait, args=(job_id,), daemon=True) for job_id in job_ids]
    for thread in threads:
        thread.start()
    # No job can end before run_jobs: the first MAX_STREAMS watches hold every stream slot, so the others are refused.
    assert refusals.wait(WAITERS - MAX_STREAMS) >= WAITERS - MAX_STREAMS, "the waits were never over the cap"
    assert set(refusals.reasons) <= {"TOO_MANY_CALLS", "TOO_MANY_STREAMS"}
    if retry_seconds < WAIT_S:  # the budget is time: let it run out while every stream slot stays taken
        held_until = time.monotonic() + 5 * retry_seconds
        while not errors and time.monotonic() < held_until:
            refusals.wait(len(refusals.reasons) + 1, timeout=0.2)
    run_jobs()
    for thread in threads:
        thread.join(WAIT_S)
    assert not errors, {job_id: repr(exc) for job_id, exc in errors.items()}
    assert states == {job_id: jobs_pb2.SUCCEEDED for job_id in job_ids}
    print(f"{WAITERS} waits over a cap of {MAX_STREAMS} streams: {len(refusals.reasons)} refusals waited out")


class CountingStub:
    """A stub that counts each method's calls (attempts the SDK makes)."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(*args, **kwargs)

        return call


def test_a_tenant_quota_refusal_is_raised_at_once_not_retried(start_server: Any) -> None:
    data = onnx_bytes(padding=5_000)
    server = start_server(tenant_quota_bytes=len(data) // 2, store_quota_bytes=0)
    with sdk.Client(server.address, retry_seconds=WAIT_S) as client:
        transport = client._transport
        assert isinstance(transport, sdk.GrpcTransport)
        counting = CountingStub(transport.stub)
        transport.stub = counting
        with pytest.raises(ResourceExhausted) as refused:
            client.upload_model(data, format="onnx", name="too-big.onnx", progress=False)
    assert refused.value.reason == "TENANT_QUOTA", refused.value
    assert counting.calls.get("UploadModel") == 1, counting.calls  # one attempt: a quota never clears by waiting
