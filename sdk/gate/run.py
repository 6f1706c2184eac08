"""Running a gate: analyse the model (and the baseline) with the tasks the policy needs, then judge the results.

    report, result, baseline = run_gate(client, "model.pt2", policy, baseline="old.pt2")

Why both jobs at once: a service with two workers runs them side by side, and the progress lines on stderr show
a CI log the gate working rather than minutes of silence.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, TextIO

from kernelscope import catalogue, ids
from sdk.gate.judge import evaluate
from sdk.gate.policy import Policy, PolicyError
from sdk.gate.verdict import GateReport

if TYPE_CHECKING:
    from sdk.client import Client
    from sdk.result import Result


def run_gate(
    client: "Client",
    model: Any,
    policy: Policy,
    *,
    baseline: Any = None,
    dataset: Any = None,
    timeout: float | None = None,
    extra_tasks: Iterable[Any] = (),
    log: TextIO | None = None,
    **model_options: Any,
) -> tuple[GateReport, "Result", "Result | None"]:
    """Analyse `model` (and `baseline`) with the tasks the policy needs (plus `extra_tasks`, e.g. "describe"
    for a report); return the report and the results.

    Both jobs are submitted before either is awaited, so a service with two workers runs them side by side.
    While they run, one line per change of task or stage (and every 10 % or 30 s) goes to `log`
    (default stderr), so a CI log shows the gate working rather than minutes of silence.
    """
    model_options = {**policy.model_options, **{k: v for k, v in model_options.items() if v}}
    dataset = dataset if dataset is not None else policy.dataset
    needing = [t for t in policy.tasks if t in catalogue.NEEDS_DATASET]
    if needing and dataset is None:
        raise PolicyError(f"the policy checks {', '.join(needing)}, which needs a labelled dataset: pass --dataset CLIPS.npz or set dataset = \"x.npz\" in the policy")
    if dataset is not None and isinstance(dataset, (str, Path)) and not ids.is_dataset_id(str(dataset)):
        if not Path(dataset).is_file():
            given = "--dataset" if dataset != policy.dataset else f"the policy's dataset key ({policy.source or 'policy'})"
            raise PolicyError(
                f"dataset {dataset} (from {given}) does not exist: pass --dataset CLIPS.npz, an .npz of x (N, C, T, H, W), "
                "y and optional class_names (the README shows how to make the demo's)"
            )
        dataset = client.upload_dataset(str(dataset)).id
    tasks = policy.task_specs() + list(extra_tasks)
    labels = [model_label(model)] + ([model_label(baseline)] if baseline is not None else [])
    jobs = [client.analyze(model, tasks=tasks, dataset=dataset, wait=False, **model_options)]
    if baseline is not None:
        jobs.append(client.analyze(baseline, tasks=tasks, dataset=dataset, wait=False, **model_options))
    for role, label, job in zip(("model", "baseline"), labels, jobs):
        _say(log, f"gate: {role} {label}: job {job.id} submitted ({', '.join(policy.tasks)})")  # type: ignore[union-attr]
    results = _await(client, jobs, labels, timeout, log)
    base = results[1] if baseline is not None else None
    names = [label or _record_name(client, r.job.model_id) for label, r in zip(labels, results)]
    report = evaluate(policy, results[0], base, model_label=names[0], baseline_label=names[1] if base is not None else "")
    return report, results[0], base


def model_label(model: Any) -> str:
    """What a user calls a model given to run_gate: a file's name, a model id as is, a module's class name."""
    if isinstance(model, Path) or (isinstance(model, str) and not ids.is_model_id(model)):
        return Path(model).name
    if isinstance(model, str):
        return ""  # an id: the model record's name, asked of the service afterwards
    return type(model).__name__


def _record_name(client: "Client", model_id: str) -> str:
    try:
        return client.get_model(model_id).name or model_id
    except Exception:  # noqa: BLE001 - a label is a nicety; the id still names the model
        return model_id


def _await(client: "Client", jobs: list[Any], labels: list[str], timeout: float | None, log: TextIO | None) -> list["Result"]:
    """Wait for every job at once (one thread each), printing progress lines; the results in `jobs`' order."""
    from sdk.result import Result

    deadline = None if timeout is None else time.monotonic() + timeout
    roles = ("model", "baseline")
    outcomes: list[Any] = [None] * len(jobs)

    def follow(i: int) -> None:
        job = jobs[i]
        last: tuple[str, str, str] = ("", "", "")
        last_fraction, last_time = -1.0, time.monotonic()
        try:
            for update in client.watch_job(job.id, deadline=deadline):
                job.proto = update
                state = _job_state(update)
                p = update.progress
                now = time.monotonic()
                key = (state, p.task, p.stage)
                if key != last or p.fraction >= last_fraction + 0.1 or now - last_time >= 30.0:
                    where = f" {p.task}: {p.stage}" if p.task else (f" {p.stage}" if p.stage else "")
                    _say(log, f"gate: {roles[i]} {labels[i] or job.id}: {state.lower()}{where} ({p.fraction:.0%})")
                    last, last_fraction, last_time = key, p.fraction, now
            outcomes[i] = Result(job.proto, client)
            _say(log, f"gate: {roles[i]} {labels[i] or job.id}: job {job.id} {_job_state(job.proto).lower()}")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcomes[i] = exc

    threads = [threading.Thread(target=follow, args=(i,), name=f"gate-{roles[i]}", daemon=True) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes


def _job_state(job: Any) -> str:
    from kernelscope.v1 import jobs_pb2

    return jobs_pb2.JobState.Name(job.state)


def _say(log: TextIO | None, line: str) -> None:
    stream = log if log is not None else sys.stderr
    print(line, file=stream, flush=True)
