#!/usr/bin/env bash
# The package as users install it (issue 24): a wheel built from this checkout, installed non-editable
# into a fresh venv (torch first, as the README installs it), run from a folder outside the checkout:
# `twentyq --version`, `classify` on a real image with the offline stand-in and with the probe, and the
# README's main job with the shipped calibration named, not pathed. .ci/run calls it after the tests;
# alone: `bash tests/wheel_smoke.sh`. The images come from ../shared/data beside the checkout (or
# $TWENTYQ_DATA); without them it classifies a PNG it draws and says that it skipped the main job.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
DATA="${TWENTYQ_DATA:-$ROOT/../shared/data}"
CAL=pokemon15_gen1.sprites  # a shipped calibration, by name (engine/encoders/data/probe/NAME.cal.json)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/twentyq-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS
step() { echo "wheel smoke [$((SECONDS - start)) s]: $*"; }
fail() { echo "wheel smoke FAILED: $*" >&2; exit 1; }
quietly() {  # a command's output only when it fails (pip's notes about the index are noise here)
    "$@" > "$WORK/cmd.log" 2>&1 || { cat "$WORK/cmd.log" >&2; fail "$* exited non-zero"; }
}

unset PYTHONPATH  # nothing from the checkout may be imported
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # both models ship with the package; never the hub

# 1. the wheel, built from a copy of the sources (a build writes build/ and *.egg-info beside them)
mkdir -p "$WORK/src" "$WORK/dist" "$WORK/run"
cp -R "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/engine" "$ROOT/policies" "$ROOT/systems" "$ROOT/bench" \
    "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$WORK/src/bench/out"
"$PY" -m venv "$WORK/venv"
VENV="$WORK/venv"
quietly "$VENV/bin/pip" install -q torch==2.13.0
quietly "$VENV/bin/pip" wheel -q --no-deps -w "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK/dist"/twentyq-*.whl)"
step "built $(basename "$WHEEL")"

# 2. installed non-editable, with its dependencies, into the fresh venv
quietly "$VENV/bin/pip" install -q "$WHEEL"
step "installed it non-editable into a fresh venv"
cd "$WORK/run"  # outside the checkout from here on
TQ="$VENV/bin/twentyq"
"$VENV/bin/python" - "$VENV" <<'EOF' || fail "engine is not imported from the installed wheel"
import sys
from pathlib import Path

import engine

where = Path(engine.__file__).resolve()
assert Path(sys.argv[1]).resolve() in where.parents, where
print(f"wheel smoke: engine imported from {where.parent}")
EOF

# 3. the commands
version="$("$TQ" --version)"
want="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("twentyq"))')"
[[ "$version" == *"$want"* ]] || fail "twentyq --version printed '$version', not the installed $want"
step "twentyq --version: $version"

if [ -f "$DATA/pokemon/sprites386/labels.csv" ]; then
    IMG="$DATA/pokemon/sprites386/images/Bulbasaur/official-artwork.png"
    [ -f "$IMG" ] || fail "$IMG not found in the shared data"
else
    IMG="$WORK/run/drawn.png"
    "$VENV/bin/python" -c "from PIL import Image; Image.new('RGB', (96, 96), (80, 160, 90)).save('$IMG')"
    step "no shared data at $DATA: classifying a drawn PNG instead of a real image"
fi

check_classify() {  # model, then extra flags: one JSON record, a label and no error
    local model="$1"; shift
    "$TQ" classify "$IMG" --model "$model" "$@" --json --quiet > "$WORK/$model.json" \
        || fail "twentyq classify --model $model exited $?"
    "$VENV/bin/python" - "$WORK/$model.json" "$model" <<'EOF' || fail "classify --model $model gave no label"
import json, sys

text = open(sys.argv[1], encoding="utf-8").read()
rec = json.loads(text.splitlines()[0]) if text.lstrip().startswith("{") else json.loads(text)[0]
assert rec["error"] is None and rec["label"], rec
print(f"wheel smoke: classify --model {sys.argv[2]}: {rec['label']} ({rec['confidence']:.2f}, Q={rec['q_spent']})")
EOF
}
check_classify offline
check_classify probe --system pokemon15_gen1 --calibration "$CAL"

if [ -f "$DATA/pokemon/sprites386/labels.csv" ]; then
    LABELS="$(cd "$DATA/pokemon/sprites386" && pwd)/labels.csv"
    "$TQ" compare --model probe --system pokemon15_gen1 --data "$LABELS" --allow-missing --calibration "$CAL" \
        --policy model_eig_per_prompt --settle auto | tee "$WORK/main_job.txt" || fail "the README's main job exited non-zero"
    grep -q "calibration:" "$WORK/main_job.txt" || fail "the main job's table does not name the calibration"
    step "the README's main job ran with --calibration $CAL"
else
    step "no shared data at $DATA: the README's main job (compare on sprites386) was skipped"
fi

step "OK, twentyq $want installed from its wheel and run outside the checkout in $((SECONDS - start)) s"
