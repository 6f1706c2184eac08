"""The kernelscope gRPC service: uploads into a content-addressed blob store, jobs over RQ, health, reflection.

    from service import Config, build_server
    server, port = build_server(Config.from_env(port=0))

The server never imports torch: jobs are enqueued by dotted path and run by workers (workers/).
"""

from service.auth import hash_token
from service.config import Config
from service.errors import REASON_METADATA_KEY, ServiceError
from service.server import build_server, serve
from service.tasks import TASK_NAMES

__all__ = ["Config", "ServiceError", "REASON_METADATA_KEY", "TASK_NAMES", "build_server", "hash_token", "serve"]
