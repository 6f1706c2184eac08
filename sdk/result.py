"""What a finished job gives back: per-task summaries, the artifact list, and a way to fetch the files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from kernelscope.v1 import jobs_pb2

if TYPE_CHECKING:
    from sdk.client import Client


@dataclass(frozen=True)
class Artifact:
    name: str
    media_type: str
    size_bytes: int
    sha256: str
    task: str


@dataclass(frozen=True)
class TaskOutcome:
    """One task's result. `error` is None when it succeeded; else {"code", "reason", "message"}."""

    task: str
    summary: dict[str, Any] | None
    artifacts: tuple[Artifact, ...]
    error: dict[str, str] | None
    duration_seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


class Result:
    """A job's results. `summaries["tconv_stats"]` is that task's summary dict (see the task's docstring)."""

    def __init__(self, job: jobs_pb2.Job, client: "Client") -> None:
        self.job = job
        self._client = client
        self.tasks: list[TaskOutcome] = [_outcome(r) for r in job.results]
        self._downloaded: dict[str, tuple[Path, str]] = {}  # artifact name -> (where download() put it, its sha256)

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def ok(self) -> bool:
        return self.job.state == jobs_pb2.SUCCEEDED

    @property
    def summaries(self) -> dict[str, dict[str, Any]]:
        return {t.task: t.summary for t in self.tasks if t.summary is not None}

    @property
    def artifacts(self) -> list[Artifact]:
        return [a for t in self.tasks for a in t.artifacts]

    def __getitem__(self, task: str) -> dict[str, Any]:
        return self.summaries[task]

    def download(self, directory: str | Path, *, only: str | None = None) -> list[Path]:
        """Fetch every artifact (or those of task `only`) under `directory`; return the local paths."""
        root = Path(directory)
        paths = []
        for artifact in self.artifacts:
            if only and artifact.task != only:
                continue
            relative = artifact_path(artifact.name)
            if relative is None:
                raise ValueError(f"refusing artifact name {artifact.name!r}")
            dest = root.joinpath(*relative.parts)
            self._client.download_artifact(self.job.id, artifact.name, dest)
            self._downloaded[artifact.name] = (dest, artifact.sha256)
            paths.append(dest)
        (root / "job.json").parent.mkdir(parents=True, exist_ok=True)
        (root / "job.json").write_text(json.dumps(self.to_dict(), indent=2))
        return paths

    def read_artifact(self, name: str) -> bytes:
        """The artifact's bytes: from the copy download() wrote when it is still intact, else from the service."""
        local, expected = self._downloaded.get(name, (None, ""))
        if local is not None and local.is_file():
            data = local.read_bytes()
            if hashlib.sha256(data).hexdigest() == expected:
                return data
        if self._client is None:
            raise RuntimeError("this result has no client to fetch artifacts with")
        return self._client.read_artifact(self.job.id, name)

    def export_video(self, name: str, dest: str | Path) -> Path:
        """Artifact `name` (an animated GIF, e.g. kernel_viz/conv1/ch003_video.gif) as an MP4 or WebM at `dest`
        (the suffix picks the format); see sdk.video."""
        from sdk.video import gif_to_video

        if not name.lower().endswith(".gif"):
            raise ValueError(f"{name} is not a video (kernel_viz's videos and flow maps are .gif artifacts)")
        return gif_to_video(self.read_artifact(name), dest)

    def export_videos(self, directory: str | Path, *, format: str = "mp4", only: str | None = None) -> list[Path]:
        """Every GIF artifact (of task `only`) as `format` ("mp4" or "webm") under `directory`, paths as the artifacts'."""
        paths = []
        for artifact in self.artifacts:
            if not artifact.name.lower().endswith(".gif") or (only and artifact.task != only):
                continue
            relative = artifact_path(artifact.name)
            if relative is None:
                raise ValueError(f"refusing artifact name {artifact.name!r}")
            paths.append(self.export_video(artifact.name, Path(directory).joinpath(*relative.with_suffix(f".{format}").parts)))
        return paths

    def _repr_html_(self) -> str:
        """What a notebook shows for a Result: the verdicts in plain words, warnings, each task's status and the headline metrics."""
        from sdk.report import notebook_html

        return notebook_html(self)

    def save_report(self, path: str | Path, description: Any = None) -> Path:
        """Write one self-contained HTML report of this job (images embedded) to `path`."""
        from sdk.report import write_report

        return write_report([self], Path(path), description=description)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job.id,
            "model_id": self.job.model_id,
            "model_name": self.job.model_name,
            "input_spec": json_format.MessageToDict(self.job.input_spec, preserving_proto_field_name=True),
            "architecture": self.job.architecture,
            "warnings": list(self.job.warnings),
            "state": jobs_pb2.JobState.Name(self.job.state),
            "error": None if not self.job.error.reason else json_format.MessageToDict(self.job.error, preserving_proto_field_name=True),
            "tasks": [
                {
                    "task": t.task,
                    "summary": t.summary,
                    "error": t.error,
                    "duration_seconds": t.duration_seconds,
                    "artifacts": [a.__dict__ for a in t.artifacts],
                }
                for t in self.tasks
            ],
        }

    def __repr__(self) -> str:
        names = ", ".join(f"{t.task}={'ok' if t.ok else t.error['reason']}" for t in self.tasks)  # type: ignore[index]
        return f"Result(job={self.job.id!r}, state={jobs_pb2.JobState.Name(self.job.state)}, {names})"


def artifact_path(name: str) -> PurePosixPath | None:
    """An artifact name as a path inside the job's folder; None when it is absolute or climbs out with "..".

    The service refuses such names already; a client that writes files checks again.
    """
    relative = PurePosixPath(name)
    return None if relative.is_absolute() or ".." in relative.parts else relative


def _outcome(result: jobs_pb2.TaskResult) -> TaskOutcome:
    error = None
    if result.HasField("error") and (result.error.code or result.error.reason):
        error = {"code": result.error.code, "reason": result.error.reason, "message": result.error.message}
    return TaskOutcome(
        task=result.task,
        summary=json.loads(result.summary_json) if result.summary_json else None,
        artifacts=tuple(
            Artifact(a.name, a.media_type, a.size_bytes, a.sha256, a.task or result.task) for a in result.artifacts
        ),
        error=error,
        duration_seconds=result.duration_seconds,
    )
