"""The SDK stays thin: importing it (and its CLI) pulls neither torch nor numpy."""

from __future__ import annotations

import subprocess
import sys


def test_import_sdk_does_not_import_torch() -> None:
    code = (
        "import sys, sdk, sdk.cli; "
        "heavy = [m for m in ('torch', 'numpy', 'onnx', 'rq', 'redis') if m in sys.modules]; "
        "print(','.join(heavy)); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"import sdk pulled in: {done.stdout.strip()} {done.stderr[-500:]}"


def test_public_surface() -> None:
    import sdk

    for name in ("Client", "Job", "Result", "JobFailed", "InvalidArgument", "NotFound", "Unavailable"):
        assert hasattr(sdk, name), name
