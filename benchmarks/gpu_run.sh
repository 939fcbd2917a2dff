#!/usr/bin/env bash
# benchmarks/gpu_suite.py on a lent GPU machine, whose image has torch, lightning and timm but not
# all of maugpt's dependencies: it installs the wheels carried in .whl/ (`make gpu-wheels` here)
# and maugpt itself into /tmp/site, then runs the suite, which writes into $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
site=${SITE:-/tmp/site}
python3=${PYTHON:-python3}  # another interpreter for a rehearsal on a CPU (with --dry-run)
"$python3" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
# maugpt as its wheel lays it out (configs/ inside it as maugpt.configs), without a build backend
rm -rf "$site/maugpt" && cp -r maugpt "$site/maugpt" && cp -r configs "$site/maugpt/configs"
export PYTHONPATH="$site"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
exec "$python3" benchmarks/gpu_suite.py --out "$OUT" "$@"
