"""`python -m service`: run the gRPC server until SIGTERM or SIGINT, then stop gracefully.

Settings come from the environment (see service/config.py); REDIS_URL is required here.
`kernelscope up` (deploy/stack.py) is the one-command local stack that also starts Redis and workers.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

from service import allocator
from service.config import Config
from service.server import serve

log = logging.getLogger("service")


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("KERNELSCOPE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = Config.from_env()
    except ValueError as exc:
        print(f"kernelscope service: bad configuration: {exc}", file=sys.stderr)
        return 2
    if not config.redis_url:
        print(
            "kernelscope service: REDIS_URL is not set (e.g. redis://127.0.0.1:6379/0); "
            "`kernelscope up` starts an embedded Redis, the server and workers together",
            file=sys.stderr,
        )
        return 2
    allocator.tune_for_streaming()
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        serve(config, stop)
    except (ValueError, OSError) as exc:  # a bad tokens file, unreadable TLS files, a port in use
        print(f"kernelscope service: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
