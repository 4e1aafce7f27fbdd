#!/usr/bin/env bash
# The device check of issue 16 (benchmarks/gpu/README.md): the CUDA half of the test suite,
# then the Market-size GPU benchmarks; writes gpu_h200.md and gpu_h200.json to --out.
# No install step: the repository root goes on PYTHONPATH. Arguments go to check.py, e.g.
#   bash benchmarks/gpu/check.sh --out "$OUT"
#   bash benchmarks/gpu/check.sh --quick --out /tmp/gpu_check     # the CPU self-check
set -u
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$root" || exit 1
exec "${PYTHON:-python3}" benchmarks/gpu/check.py "$@"
