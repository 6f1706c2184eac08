"""The worker process stops cleanly on SIGTERM at any moment, including while it registers itself.

RQ installs its signal handlers only after registering the worker in Redis, and an orchestrator (or a test)
that sees the worker appear may stop it at once: before KernelScopeWorker handled that window, the worker died
of the signal with its registration left behind.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

SIGNAL_WHILE_REGISTERING = textwrap.dedent(
    """
    import os, signal, sys
    from redis import Redis
    from rq import Queue
    from rq.serializers import JSONSerializer
    from workers.__main__ import KernelScopeWorker

    class Stopped(KernelScopeWorker):
        def register_birth(self, *args, **kwargs):
            super().register_birth(*args, **kwargs)
            os.kill(os.getpid(), getattr(signal, sys.argv[2]))  # as if sent the moment the worker appeared

    redis = Redis.from_url(sys.argv[1])
    worker = Stopped([Queue("signals", connection=redis, serializer=JSONSerializer)], connection=redis,
                     serializer=JSONSerializer, name="signalled")
    worker.work(burst=False, with_scheduler=False)  # without the handling: killed here, never returns
    print("stopped cleanly")
    """
)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_while_the_worker_registers_stops_it_cleanly(
    signal_name: str, redis_url: str, redis_conn: Any
) -> None:
    from rq import Worker

    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_WHILE_REGISTERING, redis_url, signal_name],
        capture_output=True,
        text=True,
        timeout=180,  # it stops in a second; a loaded machine takes many to start Python and import RQ
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stopped cleanly" in done.stdout
    assert "stopping on request" in done.stdout  # RQ's own loop saw the request and tore down
    assert [w.name for w in Worker.all(connection=redis_conn)] == []  # its death was registered


# The worker's command listener reads the reply to RQ's UNSUBSCRIBE and goes back to waiting before RQ stops
# it: what a loaded machine does by chance, forced here. RQ's stop then waits for that wait to end.
STOP_AFTER_THE_LISTENER_WAITS_AGAIN = textwrap.dedent(
    """
    import os, signal, sys, time
    from redis import Redis
    from rq import Queue
    from rq.serializers import JSONSerializer
    from workers.__main__ import KernelScopeWorker

    class Listening(KernelScopeWorker):
        def subscribe(self):
            super().subscribe()
            pubsub, thread, waits = self.pubsub, self.pubsub_thread, [0]
            read, unsubscribe, stop = pubsub.get_message, pubsub.unsubscribe, thread.stop

            def counted_read(*args, **kwargs):
                waits[0] += 1
                return read(*args, **kwargs)

            def unsubscribe_then_let_it_wait_again(*args):
                before = waits[0]
                unsubscribe(*args)
                deadline = time.monotonic() + 60
                while waits[0] == before and time.monotonic() < deadline:
                    time.sleep(0.01)
                print("listener waiting again:", waits[0] > before, flush=True)

            def timed_stop(*args, **kwargs):
                started = time.monotonic()
                stop(*args, **kwargs)
                print(f"listener stopped in {time.monotonic() - started:.2f} s", flush=True)

            pubsub.get_message, pubsub.unsubscribe, thread.stop = counted_read, unsubscribe_then_let_it_wait_again, timed_stop

        def dequeue_job_and_maintain_ttl(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)  # idle and listening: stopped, as an orchestrator would
            return super().dequeue_job_and_maintain_ttl(*args, **kwargs)

    redis = Redis.from_url(sys.argv[1])
    worker = Listening([Queue("signals", connection=redis, serializer=JSONSerializer)], connection=redis,
                       serializer=JSONSerializer, name="listening")
    worker.work(burst=False, with_scheduler=False)
    print("stopped cleanly")
    """
)


def test_a_stopped_worker_does_not_wait_out_its_listener(redis_url: str, redis_conn: Any) -> None:
    from rq import Worker

    done = subprocess.run(
        [sys.executable, "-c", STOP_AFTER_THE_LISTENER_WAITS_AGAIN, redis_url],
        capture_output=True,
        text=True,
        timeout=180,  # RQ's own listener waits 60 s: the old worker finishes, late, and fails the bound below
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "listener waiting again: True" in done.stdout, done.stdout
    stopped = re.search(r"listener stopped in ([0-9.]+) s", done.stdout)
    assert stopped, done.stdout
    assert float(stopped.group(1)) < 20, done.stdout  # the poll is 1 s; 20 s leaves room for a loaded machine
    assert "stopped cleanly" in done.stdout
    assert [w.name for w in Worker.all(connection=redis_conn)] == []
