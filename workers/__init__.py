"""The worker side: the RQ job entry point, the model loaders and the analyses.

gRPC's fork support is turned off here, on the package's first import, before any module of it can import grpc
(workers/connection.py does): grpcio reads GRPC_ENABLE_FORK_SUPPORT when it is first imported. See workers/connection.py.
"""

import os

os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"
