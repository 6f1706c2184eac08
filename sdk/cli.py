"""The `kernelscope` command line: run the stack, analyse models, inspect jobs and models, fetch results.

    kernelscope up [--workers N]
    kernelscope analyze MODEL --task tconv_stats --task 'kernel_viz:{"steps": 64}' [--input-spec JSON] [--dataset D.npz] [--local] [--out DIR] [--json]
    kernelscope describe MODEL [--input-spec JSON] [--local]
    kernelscope models list | models show MODEL_ID
    kernelscope jobs list [--state S] | jobs show JOB | jobs cancel JOB        (JOB may be the short id the progress bar shows)
    kernelscope download JOB DIR
    kernelscope report JOB [-o report.html]
    kernelscope gate MODEL --policy gate.toml [--baseline OLD_MODEL] [--local] [--junit J.xml] [--json R.json]

Exit codes: 0 success, 1 the job failed (gate: the gate failed), 2 usage, policy or service error, 130 interrupted.
Every error is one line that says what to do; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from google.protobuf import json_format

T = TypeVar("T")

# Where `analyze --local` keeps results when no --out is given: the embedded stack's files go with it.
LOCAL_RESULTS_DIR = Path("kernelscope-results")
# How long `jobs cancel` waits for a running job to stop before it prints the state as it is then.
CANCEL_WAIT_S = 30.0
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
INPUT_SPEC_HELP = 'JSON with any of shape, dtype, value_min, value_max, mean, std, e.g. \'{"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}\''


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from sdk.errors import JobFailed, KernelscopeError

    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so a reader that went away is a BrokenPipeError this function handles
        return code
    except JobFailed as exc:
        _error(str(exc))
        return 1
    except KernelscopeError as exc:
        _error(str(exc))
        return 2
    except UsageError as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to say, and nothing to say it on.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


class UsageError(Exception):
    """A mistake in the command line the parser cannot see (bad JSON, unknown key); the message says the fix."""


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout and shows each option's default where it has one worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("kernelscope")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    from sdk.tasks import help_text

    parser = argparse.ArgumentParser(prog="kernelscope", description="kernelscope: analyses of 3D CNNs as a service", epilog=help_text(), formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"kernelscope {_version()}")
    parser.add_argument("--target", default=None, help="service address (default: $KERNELSCOPE_TARGET or 127.0.0.1:50051)")
    parser.add_argument("--token", default=None, help="API token (default: $KERNELSCOPE_TOKEN)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, text: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter, **kw)

    up = command("up", "run the embedded stack (Redis, server, workers) until Ctrl-C")
    up.add_argument("--workers", type=int, default=1)
    up.add_argument("--port", type=int, default=50051)
    up.add_argument("--data-dir", default=str(Path.home() / ".kernelscope"))
    up.set_defaults(func=_up)

    analyze = command("analyze", "upload a model and run tasks on it", epilog=help_text())
    analyze.add_argument("model", help="model file (.pt2, .onnx, .pt, .safetensors) or a model id")
    analyze.add_argument("--task", action="append", default=[], help='task name, optionally NAME:{"option": value} (repeat for several; none means tconv_stats)')
    analyze.add_argument("--dataset", default=None, help=".npz with x, y and optional class_names (class_filters needs it)")
    _model_options(analyze)
    analyze.add_argument("--out", default=None, help=f"download artifacts and job.json into this directory (with --local: {LOCAL_RESULTS_DIR}/JOB when not given)")
    analyze.add_argument("--local", action="store_true", help="start an embedded stack for this command")
    analyze.add_argument("--no-wait", action="store_true", help="print the job id and return")
    analyze.add_argument("--timeout", type=float, default=None, help="seconds to wait for the job (default: as long as it runs)")
    analyze.add_argument("--json", action="store_true", help="print the result (and the findings) as JSON")
    analyze.add_argument("--no-progress", action="store_true", help="no progress bars, even on a terminal")
    analyze.set_defaults(func=_analyze)

    describe = command("describe", "list the layers of a model")
    describe.add_argument("model", help="model file or id")
    _model_options(describe)
    describe.add_argument("--local", action="store_true", help="start an embedded stack for this command")
    describe.add_argument("--json", action="store_true", help="print the description as JSON")
    describe.set_defaults(func=_describe)

    models = command("models", "list or show uploaded models")
    models.add_argument("action", choices=["list", "show"])
    models.add_argument("model", nargs="?", help="model id (show)")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(func=_models)

    jobs = command("jobs", "list, show or cancel jobs")
    jobs.add_argument("action", choices=["list", "show", "cancel"])
    jobs.add_argument("job", nargs="?", help="job id, or the start of one as the progress bar shows it (show, cancel)")
    jobs.add_argument("--state", default=None, type=str.lower, choices=JOB_STATES, help="list only jobs in this state")
    jobs.add_argument("--json", action="store_true", help="print JSON (show prints JSON always)")
    jobs.set_defaults(func=_jobs)

    download = command("download", "fetch a job's artifacts")
    download.add_argument("job")
    download.add_argument("dir")
    download.set_defaults(func=_download)

    report = command("report", "write a job's self-contained HTML report")
    report.add_argument("job")
    report.add_argument("-o", "--output", default=None, help="HTML file to write (default: JOB.html)")
    report.add_argument("--beside", action="store_true", help="write images beside the page (<name>_files/) instead of embedding them")
    report.set_defaults(func=_report)

    gate = command("gate", "check a model against a policy of metric bounds: exit 0 pass, 1 gate failed, 2 tool error")
    gate.add_argument("model", help="model file or id to judge")
    gate.add_argument("--policy", required=True, help="TOML policy (see examples/gate.toml)")
    gate.add_argument("--baseline", default=None, help="model file or id the relative bounds compare against")
    gate.add_argument("--dataset", default=None, help=".npz for class_filters (overrides the policy's dataset)")
    gate.add_argument("--local", action="store_true", help="start an embedded stack for this command")
    gate.add_argument("--fail-on", choices=["failure", "warning"], default=None, help="also fail the gate on warnings (default: the policy's fail_on)")
    gate.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write the JSON report here")
    gate.add_argument("--junit", dest="junit_path", default=None, metavar="PATH", help="write JUnit XML here")
    gate.add_argument("--report", dest="report_path", default=None, metavar="HTML", help="write the gate's HTML page here: the verdict, candidate vs baseline, then both jobs' reports")
    gate.add_argument("--github", action=argparse.BooleanOptionalAction, default=None, help="print GitHub annotations and the step summary (default: when GITHUB_ACTIONS=true)")
    _model_options(gate, both=True)
    gate.add_argument("--timeout", type=float, default=None, help="seconds to wait for each job")
    gate.set_defaults(func=_gate)
    return parser


def _model_options(parser: argparse.ArgumentParser, both: bool = False) -> None:
    """The options every upload takes; a gate's apply to both models and override the policy's keys."""
    from sdk.model_source import FORMAT_NAMES

    which = " (both models; overrides the policy's key)" if both else ""
    parser.add_argument("--input-spec", default=None, help=f"how the model's inputs are normalised{which}: {INPUT_SPEC_HELP}; without mean/std the model sees raw values")
    parser.add_argument("--architecture", default=None, help=f"registered architecture of a weights-only checkpoint{which}")
    parser.add_argument("--format", default=None, choices=sorted(FORMAT_NAMES), help=f"override format detection{which}")
    if not both:
        parser.add_argument("--name", default=None, help="the model's name (default: the file name)")


def _upload_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model options given on the command line (unset ones absent, so a policy's or the SDK's defaults hold)."""
    options: dict[str, Any] = {}
    if args.input_spec:
        options["input_spec"] = parse_input_spec(args.input_spec)
    for key in ("architecture", "format", "name"):
        if getattr(args, key, None):
            options[key] = getattr(args, key)
    return options


def parse_input_spec(text: str) -> dict[str, Any]:
    """--input-spec's JSON as the SDK's input_spec mapping; a one-line UsageError naming the fix otherwise."""
    from kernelscope.v1 import common_pb2

    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--input-spec is not JSON ({exc.msg}); give e.g. {INPUT_SPEC_HELP}") from None
    valid = list(common_pb2.InputSpec.DESCRIPTOR.fields_by_name)
    if not isinstance(spec, dict):
        raise UsageError(f"--input-spec must be a JSON object with any of {', '.join(valid)}")
    unknown = [k for k in spec if k not in valid]
    if unknown:
        raise UsageError(f"--input-spec has no key {unknown[0]!r}; its keys: {', '.join(valid)}")
    return spec


def _client(args: argparse.Namespace, local: bool = False) -> Any:
    from sdk.client import Client

    if local:
        print("starting an embedded stack...", file=sys.stderr)
        return Client.local()
    return Client(args.target, token=args.token)


def parse_task(text: str) -> Any:
    """'name' or 'name:{json options}' as an SDK task spec."""
    name, _, options = text.partition(":")
    if not options:
        return name
    try:
        return {name: json.loads(options)}
    except json.JSONDecodeError as exc:
        raise UsageError(f"options of task {name!r} are not JSON ({exc.msg}); give e.g. --task '{name}:{{\"seed\": 0}}'") from None


def _up(args: argparse.Namespace) -> int:
    import logging

    from deploy.stack import LocalStack, StackInUse

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    stack = LocalStack(workers=args.workers, port=args.port, data_dir=args.data_dir)
    try:
        stack.start()
    except StackInUse as exc:  # the running stack is left as it is: not one of its files was opened
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"kernelscope serving on {stack.target} with {args.workers} worker(s); logs in {stack.log_dir}; Ctrl-C stops", flush=True)
    stopping = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stopping:
            time.sleep(0.2)
            if stack.server is not None and stack.server.poll() is not None:
                print("server exited; stopping", file=sys.stderr)
                break
    finally:
        print("stopping...", flush=True)
        stack.stop()
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from sdk import tasks as task_specs

    specs = [parse_task(t) for t in args.task] or ["tconv_stats"]
    task_specs.to_tasks(specs)  # a misspelled option is refused here, before anything is uploaded
    options = _upload_options(args)
    out = Path(args.out) if args.out else None
    with _client(args, local=args.local) as client:
        job = client.analyze(args.model, tasks=specs, dataset=args.dataset, wait=False, progress=False if args.no_progress else None, **options)
        if args.no_wait:
            print(job.id)
            return 0
        result = _wait_or_cancel(client, job, args.timeout, False if args.no_progress else None)
        if result is None:
            return 130
        if out is None and args.local:
            out = LOCAL_RESULTS_DIR / result.id  # the embedded stack and its files go when this command ends
        if out is not None:
            paths = result.download(out)
            print(f"{len(paths)} artifacts and job.json in {out}", file=sys.stderr)
        if args.json:
            from sdk import findings

            print(json.dumps({**result.to_dict(), "findings": findings.as_dict(result)}, indent=2))
        else:
            _print_result(result)
        return 0 if result.ok else 1


def _wait_or_cancel(client: Any, job: Any, timeout: float | None, progress: bool | None) -> Any:
    """The job's Result, or None after Ctrl-C (the job then cancelled on the service)."""
    done, result = _run_or_cancel(client, lambda: job.wait(timeout=timeout, progress=progress, raise_on_error=False), [job])
    return result if done else None


def _run_or_cancel(client: Any, work: Callable[[], T], jobs: list[Any] | None = None) -> tuple[bool, T | None]:
    """(True, work()) or, after Ctrl-C, (False, None) with every job of `jobs` and every job `client` created
    meanwhile cancelled on the service (each said so): a job left behind would run on unseen.

    `work` runs in a thread and Ctrl-C lands in this one's join: a KeyboardInterrupt raised inside gRPC's own
    wait for a stream message left the channel unable to close (the process hung at exit, 1 run in 5)."""
    import threading

    started = list(jobs or [])
    create = client.create_job

    def recorded(*args: Any, **kwargs: Any) -> Any:
        job = create(*args, **kwargs)
        started.append(job)
        return job

    client.create_job = recorded  # this instance only: describe and run_gate create theirs inside the SDK
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    waiter = threading.Thread(target=run, name="kernelscope-wait", daemon=True)
    try:
        waiter.start()  # inside: start() itself waits for the thread, and Ctrl-C may come then
        while waiter.is_alive():
            waiter.join(0.2)
    except KeyboardInterrupt:
        if not started:
            print("\ninterrupted before any job was submitted", file=sys.stderr, flush=True)
        for job in started:
            _cancel_on_interrupt(client, job)
        return False, None
    finally:
        client.create_job = create
    if "error" in outcome:
        raise outcome["error"]
    return True, outcome["value"]


def _cancel_on_interrupt(client: Any, job: Any) -> None:
    """Ctrl-C while waiting: the job would run on unseen, so ask the service to stop it and say what became of it."""
    from sdk.errors import KernelscopeError

    print(f"\ninterrupted: asking the service to cancel job {job.id}...", file=sys.stderr, flush=True)
    try:
        state = _cancel(client, job.id, wait_s=10.0).state
    except KernelscopeError as exc:
        print(f"could not cancel job {job.id}: {exc}; `kernelscope jobs cancel {job.id}` retries", file=sys.stderr)
        return
    print(f"job {job.id}: {state}", file=sys.stderr)


def _cancel(client: Any, job_id: str, wait_s: float) -> Any:
    """Cancel, then wait (at most `wait_s`) for a running job to stop; the Job as it is then."""
    from sdk.errors import DeadlineExceeded, FailedPrecondition

    try:
        job = client.cancel_job(job_id)
    except FailedPrecondition as exc:
        if exc.reason != "JOB_TERMINAL":
            raise
        return client.get_job(job_id)  # it ended first: its final state is the answer
    if not job.done:
        try:
            for update in client.watch_job(job_id, deadline=time.monotonic() + wait_s):
                job.proto = update
        except DeadlineExceeded:
            pass
    return job


def _print_result(result: Any) -> None:
    from sdk import findings

    job = result.job
    state = result.to_dict()["state"]
    print(f"job {result.id}: {state}")
    model = f"model {job.model_name or job.model_id} ({job.model_id})"
    spec = job.input_spec
    if spec.mean or spec.std:
        model += f"; inputs normalised with mean {_floats(spec.mean)}, std {_floats(spec.std)}"
    print(model)
    for warning in job.warnings:
        print(f"warning: {warning}")
    if not result.ok and (job.error.reason or job.error.message):
        print(f"  {job.error.code} {job.error.reason}: {job.error.message}")
    for t in result.tasks:
        status = "ok" if t.ok else f"{t.error['code']} {t.error['reason']}: {t.error['message']}"
        print(f"  {t.task}: {status} ({t.duration_seconds:.1f}s, {len(t.artifacts)} artifacts)")
    found = findings.lines(result)
    if found:
        print("findings:")
        print("\n".join(found))


def _floats(values: Any) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _describe(args: argparse.Namespace) -> int:
    with _client(args, local=args.local) as client:
        done, description = _run_or_cancel(client, lambda: client.describe(args.model, **_upload_options(args)))
    if not done:
        return 130
    if args.json:
        print(json_format.MessageToJson(description, preserving_proto_field_name=True))
        return 0
    rows = [("layer", "kind", "kernel", "stride", "receptive field", "output")]
    for layer in description.layers:
        fmt = lambda v: "x".join(str(int(s)) for s in v) or "-"  # noqa: E731
        rows.append((layer.name, layer.kind, fmt(layer.kernel_shape), fmt(layer.stride), fmt(layer.receptive_field), fmt(layer.output_shape)))
    _table(rows)
    return 0


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _models(args: argparse.Namespace) -> int:
    from kernelscope.v1 import models_pb2

    with _client(args) as client:
        if args.action == "show":
            if not args.model:
                raise UsageError("give a model id: kernelscope models show MODEL_ID (kernelscope models list shows them)")
            print(json_format.MessageToJson(client.get_model(args.model), preserving_proto_field_name=True))
            return 0
        found = client.list_models()
    if args.json:
        print(json.dumps([json_format.MessageToDict(m, preserving_proto_field_name=True) for m in found], indent=2))
        return 0
    rows = [("id", "name", "format", "size", "input spec", "created")]
    for m in found:
        spec = m.input_spec
        text = ("shape " + "x".join(str(s) for s in spec.shape) + " " if spec.shape else "") + (
            f"mean {_floats(spec.mean)} std {_floats(spec.std)}" if spec.mean or spec.std else "no mean/std"
        )
        fmt = models_pb2.ModelFormat.Name(m.format).lower() + (f" ({m.architecture})" if m.architecture else "")
        rows.append((m.id, m.name, fmt, _size(m.size_bytes), text, m.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M")))
    _table(rows)
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.action == "list":
            listed = client.list_jobs(state=args.state)
            if args.json:
                print(json.dumps([json_format.MessageToDict(j.proto, preserving_proto_field_name=True) for j in listed], indent=2))
                return 0
            for job in listed:
                p = job.proto.progress
                name = job.proto.model_name or job.proto.model_id
                print(f"{job.id}  {job.state:<9}  {p.fraction * 100:5.1f}%  {name}  ({job.proto.model_id})")
            return 0
        if not args.job:
            raise UsageError(f"give a job id: kernelscope jobs {args.action} JOB (kernelscope jobs list shows them)")
        job_id = resolve_job(client, args.job)
        if args.action == "show":
            print(json_format.MessageToJson(client.get_job(job_id).proto, preserving_proto_field_name=True))
            return 0
        job = _cancel(client, job_id, wait_s=CANCEL_WAIT_S)
        if args.json:
            print(json_format.MessageToJson(job.proto, preserving_proto_field_name=True))
        elif job.state == "CANCELLED":
            print(f"job {job.id}: {job.state}")
        elif job.done:
            print(f"job {job.id}: {job.state} (it ended before the cancel; nothing was cancelled)")
        else:
            print(f"job {job.id}: {job.state}, cancel requested (the worker stops it at its next check)")
        return 0


def resolve_job(client: Any, text: str) -> str:
    """A job id from a full id or a unique start of one (the progress bar shows `job_` and 8 hex digits)."""
    from sdk.errors import NotFound

    try:
        return client.get_job(text).id
    except NotFound:
        if len(text) < 6:
            raise
    matches = [j.id for j in client.list_jobs() if j.id.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(f"{text!r} is the start of {len(matches)} job ids ({', '.join(matches[:3])}, ...); give more of it")
    raise NotFound(f"no job {text!r} (nor one whose id starts so); kernelscope jobs list shows them", reason="JOB_NOT_FOUND")


def _download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        paths = client.result(resolve_job(client, args.job)).download(args.dir)
    print(f"{len(paths)} artifacts in {args.dir}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from sdk.report import write_report

    with _client(args) as client:
        job_id = resolve_job(client, args.job)
        output = Path(args.output or f"{job_id}.html")
        path = write_report([client.result(job_id)], output, embed=not args.beside)
    print(path)
    return 0


def _gate(args: argparse.Namespace) -> int:
    """Exit 0 pass, 1 gate failed, 2 anything else went wrong (a traceback must never read as a failed gate)."""
    from sdk.errors import KernelscopeError
    from sdk.gate import Policy, run_gate

    try:
        policy = Policy.load(args.policy)
        options = _upload_options(args)
        with _client(args, local=args.local) as client:
            done, gated = _run_or_cancel(client, lambda: run_gate(
                client, args.model, policy, baseline=args.baseline, dataset=args.dataset, timeout=args.timeout,
                extra_tasks=["describe"] if args.report_path else [], **options
            ))
            if not done or gated is None:
                return 130
            report = gated[0]
            print(report.to_text(args.fail_on), flush=True)  # the verdict is the command's output: stdout
            # Inside the client's life: the HTML page reads the jobs' artifacts from the service.
            report.write(
                json_path=args.json_path, junit_path=args.junit_path, html_path=args.report_path,
                github=args.github, fail_on=args.fail_on,
            )
        return report.exit_code(args.fail_on)
    except (KernelscopeError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - a crash is a tool error (2), never "gate failed" (1)
        import traceback

        traceback.print_exc()
        print(f"error: the gate itself failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    if os.environ.get("GITHUB_ACTIONS") == "true" if args.github is None else args.github:
        print("::error title=kernelscope gate::the gate could not run; see the log")
    return 2


if __name__ == "__main__":
    sys.exit(main())
