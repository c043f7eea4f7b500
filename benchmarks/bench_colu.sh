#!/usr/bin/env sh
# The dense-activation benchmark of docs/performance.md: CoLU/RCoLU S = 4, 8, 16, hard and soft, against
# ReLU/SiLU/GELU on (4096, 1024) and (64, 512), plus the training steps of the MLP and the paper's models.
# Writes the printed table to STEM.txt and its JSON to STEM.json, where STEM defaults to
# results/performance/DATE-colu-bench; docs/render_performance.py reads both kinds of file.
# Usage: ./benchmarks/bench_colu.sh [STEM]
set -eu
cd "$(dirname "$0")/.."
STEM=${1:-results/performance/$(date -u +%Y-%m-%d-%H%M)-colu-bench}
CMD="colu bench --shapes 4096x1024,64x512 --cone-dims 4,8,16 --scalings hard,soft --repeats 40 --models"
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)
{
    echo "# machine: ${CPU:-unknown CPU}, $(getconf _NPROCESSORS_ONLN 2>/dev/null || echo '?') logical CPUs"
    echo "# command: $CMD --json $STEM.json"
    echo "# date: $(date -u '+%Y-%m-%d %H:%M UTC')"
} > "$STEM.txt"
$CMD --json "$STEM.json" >> "$STEM.txt"
cat "$STEM.txt"
