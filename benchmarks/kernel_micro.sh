#!/usr/bin/env sh
# ns per element of the float32 CPU kernel (forward, backward; one core; L2-resident), best of 30 runs.
# Usage: ./benchmarks/kernel_micro.sh [KERNEL_C]   (default: the package's cpu_kernel.c; pass another
# revision's file, e.g. from `git show REV:src/colu/ops/cpu_kernel.c > old.c`, to compare)
set -eu
cd "$(dirname "$0")/.."
KERNEL=$(realpath "${1:-src/colu/ops/cpu_kernel.c}")
BIN=$(mktemp)
trap 'rm -f "$BIN"' EXIT
${CC:-cc} -O3 -march=native -fno-math-errno -fno-trapping-math -fopenmp -std=gnu11 -DKFILE="\"$KERNEL\"" benchmarks/kernel_micro.c -o "$BIN" -lm
"$BIN"
