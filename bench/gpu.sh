#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA GPU and a CUDA build of torch already installed (the worker's
# CUDA image, or a lent GPU machine): the test suite's CUDA path, then every analysis bench on the GPU.
#
#   bash bench/gpu.sh            # prints the figures; exits non-zero if a CUDA test fails
#
# The CUDA path of the tests: the zoo matrix (12 architectures x 4 exports x 4 tasks, each cell a planted
# answer) with every task on `cuda` (KERNELSCOPE_TEST_DEVICE), the 3TConv layer's device tests, and the
# planted known-answer tests of each analysis. Nothing here needs Redis or the service.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:$PWD/proto${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0

$PY - <<'EOF' || exit 2
import torch
assert torch.cuda.is_available(), "no CUDA device: bench/gpu.sh is for a GPU machine"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name(0)}")
EOF

echo "== CUDA tests"
KERNELSCOPE_TEST_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/workers/test_zoo_matrix.py tests/workers/test_tconv_layer.py || status=1

run_bench() {
    echo "== $*"
    $PY "$@" || status=1
}
for bench in bench/*.py; do
    case "$bench" in
        bench/service.py|bench/chaos.py) continue ;;  # the service's own figures: no GPU in them
    esac
    if $PY "$bench" --help 2>/dev/null | grep -q -- "--device"; then
        run_bench "$bench" --device cuda
    fi
done
exit $status
