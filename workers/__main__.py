"""`python -m workers`: one forking RQ worker serving the kernelscope queue.

The parent process imports torch (so each forked work-horse starts warm) but never touches CUDA:
CUDA is initialised, if at all, inside the work-horse, which is what makes forking safe on GPU nodes.
It also never opens a gRPC channel (those do not survive fork); each horse opens its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from workers import defaults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", defaults.REDIS_URL))
    parser.add_argument("--queue", default=os.environ.get("KERNELSCOPE_QUEUE", defaults.QUEUE_NAME))
    parser.add_argument("--service", default=os.environ.get("KERNELSCOPE_SERVICE", defaults.SERVICE_TARGET))
    parser.add_argument("--name", default=None, help="worker name (default: RQ's)")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--no-preload", action="store_true", help="do not import torch in the parent")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")

    from workers import connection

    connection.configure(target=args.service)
    if not args.no_preload:
        import torch  # noqa: F401  - warm start for the forked horses; CUDA stays untouched

        import workers.tasks  # noqa: F401

    from redis import Redis
    from rq import Queue, Worker
    from rq.serializers import JSONSerializer

    redis = Redis.from_url(args.redis_url)
    queue = Queue(args.queue, connection=redis, serializer=JSONSerializer)
    worker = Worker([queue], connection=redis, serializer=JSONSerializer, name=args.name)
    worker.work(burst=args.burst, with_scheduler=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
