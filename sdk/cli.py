"""The `kernelscope` command line: run the stack, analyse models, inspect jobs, fetch results.

    kernelscope up [--workers N]
    kernelscope analyze MODEL --task tconv_stats --task 'kernel_viz:{"steps": 64}' [--dataset D.npz] [--local] [--out DIR]
    kernelscope describe MODEL [--local]
    kernelscope jobs list|show JOB|cancel JOB
    kernelscope download JOB DIR
    kernelscope report JOB [-o report.html]
    kernelscope gate MODEL --policy gate.toml [--baseline OLD_MODEL] [--local] [--junit J.xml] [--json R.json]

Exit codes: 0 success, 1 the job failed (gate: the gate failed), 2 usage, policy or service error.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from sdk.errors import JobFailed, KernelscopeError

    try:
        return int(args.func(args) or 0)
    except JobFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KernelscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kernelscope", description="kernelscope: analyses of 3D CNNs as a service")
    parser.add_argument("--target", default=None, help="service address (default: $KERNELSCOPE_TARGET or 127.0.0.1:50051)")
    parser.add_argument("--token", default=None, help="API token (default: $KERNELSCOPE_TOKEN)")
    sub = parser.add_subparsers(dest="command")

    up = sub.add_parser("up", help="run the embedded stack (Redis, server, workers) until Ctrl-C")
    up.add_argument("--workers", type=int, default=1)
    up.add_argument("--port", type=int, default=50051)
    up.add_argument("--data-dir", default=str(Path.home() / ".kernelscope"))
    up.set_defaults(func=_up)

    analyze = sub.add_parser("analyze", help="upload a model and run tasks on it")
    analyze.add_argument("model", help="model file (.pt2, .onnx, .pt, .safetensors) or a model id")
    analyze.add_argument("--task", action="append", default=[], help='task name, optionally NAME:{"option": value}')
    analyze.add_argument("--dataset", default=None, help=".npz with x, y and optional class_names")
    analyze.add_argument("--format", default=None, help="override format detection (onnx, torchscript, state_dict, ...)")
    analyze.add_argument("--architecture", default="", help="registered architecture of a weights-only checkpoint")
    analyze.add_argument("--input-spec", default=None, help='JSON, e.g. {"shape": [3, 8, 32, 32], "mean": [0.5, 0.5, 0.5]}')
    analyze.add_argument("--out", default=None, help="download artifacts into this directory")
    analyze.add_argument("--local", action="store_true", help="start an embedded stack for this command")
    analyze.add_argument("--no-wait", action="store_true", help="print the job id and return")
    analyze.add_argument("--timeout", type=float, default=None, help="seconds to wait for the job")
    analyze.add_argument("--json", action="store_true", help="print the result as JSON")
    analyze.add_argument("--no-progress", action="store_true")
    analyze.set_defaults(func=_analyze)

    describe = sub.add_parser("describe", help="list the layers of a model")
    describe.add_argument("model")
    describe.add_argument("--format", default=None)
    describe.add_argument("--local", action="store_true")
    describe.add_argument("--json", action="store_true")
    describe.set_defaults(func=_describe)

    jobs = sub.add_parser("jobs", help="list, show or cancel jobs")
    jobs.add_argument("action", choices=["list", "show", "cancel"])
    jobs.add_argument("job", nargs="?")
    jobs.add_argument("--state", default=None)
    jobs.set_defaults(func=_jobs)

    download = sub.add_parser("download", help="fetch a job's artifacts")
    download.add_argument("job")
    download.add_argument("dir")
    download.set_defaults(func=_download)

    report = sub.add_parser("report", help="write a job's self-contained HTML report")
    report.add_argument("job")
    report.add_argument("-o", "--output", default=None, help="HTML file to write (default: JOB.html)")
    report.add_argument("--beside", action="store_true", help="write images beside the page (<name>_files/) instead of embedding them")
    report.set_defaults(func=_report)

    gate = sub.add_parser("gate", help="check a model against a policy of metric bounds: exit 0 pass, 1 gate failed, 2 tool error")
    gate.add_argument("model", help="model file or id to judge")
    gate.add_argument("--policy", required=True, help="TOML policy (see examples/gate.toml)")
    gate.add_argument("--baseline", default=None, help="model file or id the relative bounds compare against")
    gate.add_argument("--dataset", default=None, help=".npz for class_filters (overrides the policy's dataset)")
    gate.add_argument("--local", action="store_true", help="start an embedded stack for this command")
    gate.add_argument("--fail-on", choices=["failure", "warning"], default=None, help="also fail the gate on warnings (default: the policy's fail_on)")
    gate.add_argument("--json", dest="json_path", default=None, metavar="PATH", help="write the JSON report here")
    gate.add_argument("--junit", dest="junit_path", default=None, metavar="PATH", help="write JUnit XML here")
    gate.add_argument("--report", dest="report_path", default=None, metavar="HTML", help="write the HTML report of the model's (and the baseline's) job here")
    gate.add_argument("--github", action=argparse.BooleanOptionalAction, default=None, help="print GitHub annotations and the step summary (default: when GITHUB_ACTIONS=true)")
    gate.add_argument("--format", default=None, help="override model format detection")
    gate.add_argument("--architecture", default="", help="registered architecture of weights-only checkpoints (both models)")
    gate.add_argument("--input-spec", default=None, help="JSON input spec for both models")
    gate.add_argument("--timeout", type=float, default=None, help="seconds to wait for each job")
    gate.set_defaults(func=_gate)
    return parser


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
        raise SystemExit(f"error: options of task {name!r} are not JSON: {exc}")


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
    tasks = [parse_task(t) for t in args.task] or ["tconv_stats"]
    options: dict[str, Any] = {"format": args.format, "architecture": args.architecture}
    if args.input_spec:
        options["input_spec"] = json.loads(args.input_spec)
    with _client(args, local=args.local) as client:
        dataset = args.dataset
        if args.no_wait:
            job = client.analyze(args.model, tasks=tasks, dataset=dataset, wait=False, **options)
            print(job.id)
            return 0
        result = client.analyze(
            args.model,
            tasks=tasks,
            dataset=dataset,
            progress=False if args.no_progress else None,
            timeout=args.timeout,
            raise_on_error=False,
            **options,
        )
        if args.out:
            paths = result.download(args.out)
            print(f"{len(paths)} artifacts in {args.out}", file=sys.stderr)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
        else:
            _print_result(result)
        return 0 if result.ok else 1


def _print_result(result: Any) -> None:
    print(f"job {result.id}: {result.to_dict()['state']}")
    for t in result.tasks:
        status = "ok" if t.ok else f"{t.error['code']} {t.error['reason']}: {t.error['message']}"
        print(f"  {t.task}: {status} ({t.duration_seconds:.1f}s, {len(t.artifacts)} artifacts)")


def _describe(args: argparse.Namespace) -> int:
    with _client(args, local=args.local) as client:
        description = client.describe(args.model, format=args.format)
    if args.json:
        print(json_format.MessageToJson(description, preserving_proto_field_name=True))
        return 0
    rows = [("layer", "kind", "kernel", "stride", "receptive field", "output")]
    for layer in description.layers:
        fmt = lambda v: "x".join(str(int(s)) for s in v) or "-"  # noqa: E731
        rows.append((layer.name, layer.kind, fmt(layer.kernel_shape), fmt(layer.stride), fmt(layer.receptive_field), fmt(layer.output_shape)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    return 0


def _jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.action == "list":
            for job in client.list_jobs(state=args.state):
                p = job.proto.progress
                print(f"{job.id}  {job.state:<9}  {p.fraction * 100:5.1f}%  model={job.proto.model_id}")
            return 0
        if not args.job:
            raise SystemExit("error: give a job id")
        job = client.get_job(args.job) if args.action == "show" else client.cancel_job(args.job)
        print(json_format.MessageToJson(job.proto, preserving_proto_field_name=True))
        return 0


def _download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        paths = client.result(args.job).download(args.dir)
    print(f"{len(paths)} artifacts in {args.dir}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from sdk.report import write_report

    output = Path(args.output or f"{args.job}.html")
    with _client(args) as client:
        path = write_report([client.result(args.job)], output, embed=not args.beside)
    print(path)
    return 0


def _gate(args: argparse.Namespace) -> int:
    """Exit 0 pass, 1 gate failed, 2 anything else went wrong (a traceback must never read as a failed gate)."""
    from sdk.errors import KernelscopeError
    from sdk.gate import Policy, run_gate

    try:
        policy = Policy.load(args.policy)
        options: dict[str, Any] = {"format": args.format, "architecture": args.architecture}
        if args.input_spec:
            options["input_spec"] = json.loads(args.input_spec)
        with _client(args, local=args.local) as client:
            report, result, base = run_gate(
                client, args.model, policy, baseline=args.baseline, dataset=args.dataset, timeout=args.timeout,
                extra_tasks=["describe"] if args.report_path else [], **options
            )
            if args.report_path:
                from sdk.report import write_report

                write_report([r for r in (result, base) if r is not None], Path(args.report_path))
        print(report.to_text(args.fail_on), file=sys.stderr)
        report.write(json_path=args.json_path, junit_path=args.junit_path, github=args.github, fail_on=args.fail_on)
        return report.exit_code(args.fail_on)
    except KernelscopeError as exc:
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
