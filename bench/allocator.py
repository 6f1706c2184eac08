"""Page faults per MiB that a process streaming MiB-sized buffers takes, with and without the server's malloc
tuning (service/allocator.py), and with an operator's MALLOC_MMAP_THRESHOLD_ that the tuning leaves alone.

Each case is a fresh interpreter that allocates and frees two 1 MiB buffers 100 times (what an upload does
with its messages) and counts its minor page faults. The counts depend on the machine (transparent huge
pages, what the interpreter allocated at start-up, which moves glibc's dynamic mmap threshold), so they are
figures to read here, not something a test can assert; tests/service/test_upload_wire.py checks what the
tuning does to glibc's own bookkeeping instead.

    python bench/allocator.py [--rounds 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHURN = """
import resource, sys
if sys.argv[1] == "tune":
    from service import allocator
    allocator.tune_for_streaming()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds = int(sys.argv[2])
start = faults()
for _ in range(rounds):
    a = b"x" * (1 << 20); b = b"y" * (1 << 20); del a, b
print((faults() - start) / (2 * rounds))
"""

CASES = (
    ("glibc defaults", {}, False),
    ("tuned", {}, True),
    ("tuned, MALLOC_MMAP_THRESHOLD_=128K set", {"MALLOC_MMAP_THRESHOLD_": str(128 << 10)}, True),
)


def faults_per_mib(env: dict[str, str], tune: bool, rounds: int) -> float:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-c", CHURN, "tune" if tune else "plain", str(rounds)]
    out = subprocess.run(argv, cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, check=True)
    return float(out.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100, help="allocate-and-free rounds per process")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per case")
    args = parser.parse_args()
    print(f"minor page faults per MiB allocated and freed ({args.rounds} rounds of 2 x 1 MiB, {args.repeats} processes)")
    for label, env, tune in CASES:
        counts = [faults_per_mib(env, tune, args.rounds) for _ in range(args.repeats)]
        print(f"  {label:40s} " + "  ".join(f"{c:7.2f}" for c in counts) + "   (a MiB is 256 pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
