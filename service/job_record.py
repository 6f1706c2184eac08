"""The service's own record of a job (JSON under ks:{tenant}:job:{id}): what was asked, by whom, whether a cancel
was requested, and once the job ended its outcome, so that a job stays readable after RQ's data expires."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from google.protobuf import timestamp_pb2

from service.registry import Index


@dataclass
class JobRecord:
    """The service's own record of a job (JSON under ks:{tenant}:job:{id})."""

    id: str
    tenant: str
    model_id: str
    dataset_id: str
    tasks: list[dict[str, Any]]
    request_id: str
    create_time: str
    internal: bool = False
    cancel_requested: bool = False
    cancel_time: str = ""
    # The Job (as JSON, without artifacts) once it ended; RQ is not consulted after that.
    outcome: dict[str, Any] | None = None
    # The model as the job ran it, and what the user should know about that (Job.warnings).
    model_name: str = ""
    input_spec: dict[str, Any] | None = None
    architecture: str = ""
    warnings: list[str] | None = None

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: str | bytes) -> "JobRecord":
        """The record; ValueError when the stored JSON is not one."""
        try:
            data = json.loads(raw)
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"not a job record: {exc}") from None

    @property
    def index_member(self) -> str:
        return Index.member(_micros(self.create_time), self.id)


def _micros(text: str) -> int:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromJsonString(text)
    return stamp.ToMicroseconds()
