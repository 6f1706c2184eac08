"""The SDK's describe waits on a long description as on any job (with progress) instead of failing at the
service's DescribeModel deadline while a worker is busy with that very model."""

from __future__ import annotations

import threading
import time
from typing import Any

import sdk
import sdk.client
from tests.service import fake_worker
from tests.service.helpers import onnx_bytes, upload_model


def test_a_describe_slower_than_the_services_deadline_is_waited_on_as_a_job(start_fake_server: Any, run_jobs: Any, monkeypatch: Any) -> None:
    server = start_fake_server(describe_timeout=0.5)  # DescribeModel gives up after 0.5 s
    monkeypatch.setattr(sdk.client, "DESCRIBE_QUICK_S", 0.3)
    model = upload_model(server.stub(), onnx_bytes(), name="fake:sleep=1.5")  # each describe job takes ~2 s
    found: dict[str, Any] = {}

    def describe() -> None:
        with sdk.Client(server.address) as client:
            try:
                found["description"] = client.describe(model.id, progress=False, timeout=60)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                found["error"] = exc

    caller = threading.Thread(target=describe)
    caller.start()
    deadline = time.monotonic() + 60
    while caller.is_alive() and time.monotonic() < deadline:
        run_jobs()  # a worker working through whatever the service queued (the hidden job, then the SDK's)
        time.sleep(0.05)
    caller.join(timeout=5)
    assert "error" not in found, found.get("error")
    description = found["description"]
    assert description.model_id == model.id
    assert [(layer.name, layer.kind, list(layer.kernel_shape)) for layer in description.layers] == [
        (raw["name"], raw["kind"], raw["kernel_shape"]) for raw in fake_worker.DESCRIPTION["layers"]
    ]
    assert list(description.input_spec.shape) == fake_worker.DESCRIPTION["input_spec"]["shape"]
    assert list(description.supported_tasks) == fake_worker.DESCRIPTION["supported_tasks"]
