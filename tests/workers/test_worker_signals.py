"""The worker process stops cleanly on SIGTERM at any moment, including while it registers itself.

RQ installs its signal handlers only after registering the worker in Redis, and an orchestrator (or a test)
that sees the worker appear may stop it at once: before KernelScopeWorker handled that window, the worker died
of the signal with its registration left behind.
"""

from __future__ import annotations

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
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stopped cleanly" in done.stdout
    assert "stopping on request" in done.stdout  # RQ's own loop saw the request and tore down
    assert [w.name for w in Worker.all(connection=redis_conn)] == []  # its death was registered
