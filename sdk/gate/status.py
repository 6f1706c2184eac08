"""The five ends of a check: pass, warn, fail, error (could not run) and skip (a baseline check without a baseline).

Why a module of its own: the judge writes them, the gate's verdict counts them, every output format shows them.
"""

PASS, WARN, FAIL, ERROR, SKIP = "pass", "warn", "fail", "error", "skip"
