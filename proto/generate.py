"""Regenerate the Python modules from the .proto files: `python proto/generate.py`.

The generated *_pb2.py, *_pb2.pyi and *_pb2_grpc.py are checked in so that the SDK installs
without grpcio-tools; tests/test_proto.py fails when they are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = PROTO_ROOT / "kernelscope" / "v1"


def generate(out_dir: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc over every kernelscope/v1/*.proto, writing into out_dir; return the files written."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PACKAGE_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    return sorted((out_dir / "kernelscope" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    written = generate()
    print("\n".join(str(p) for p in written))
    sys.exit(0)
