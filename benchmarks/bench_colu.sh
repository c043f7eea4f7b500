#!/usr/bin/env sh
# Regenerates the README "Performance" table: the full default bench and the paper models' training steps, JSON next to it.
set -eu
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results.json}
exec colu bench --shapes 4096x1024,64x512 --cone-dims 4,8,16 --scalings hard,soft --repeats 40 --models --json "$OUT"
