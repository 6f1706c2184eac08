"""Resource limits and a clean environment for the process that loads an untrusted model.

They now live in workers/sandbox.py, applied inside the sandboxed model process (never in the worker or its
horse); this module keeps the old import path for callers and tests.
"""

from __future__ import annotations

from workers.sandbox import CPU_GRACE_SECONDS, SECRET_PATTERNS, apply_limits, scrub_environment

__all__ = ["CPU_GRACE_SECONDS", "SECRET_PATTERNS", "apply_limits", "scrub_environment"]
