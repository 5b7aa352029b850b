#!/usr/bin/env bash
# The one GPU check: devices, the model/attention tests on the GPU (cuDNN vs XLA included), then the
# 1.1B model-step benchmark with cuDNN and XLA attention, packed rows, and a scanned layer stack.
# Run from the repository root: `bash benchmarks/gpu_check.sh`. Results (JSON lines, logs) go to $OUT
# when set, else ./gpu_check_out. About 5-6 minutes on one H100.
#
# The GPU image lacks ml_collections (config files need it) and maybe pytest: carry the ignored
# `.whl/` folder (pure-Python wheels: ml-collections, pytest and its dependencies); they are installed
# offline from there when missing.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-gpu_check_out}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

for module in ml_collections pytest; do
  if ! python3 -c "import $module" 2>/dev/null; then
    echo "== installing $module from .whl/ (offline)"
    python3 -m pip install -q --no-index --find-links .whl "${module/_/-}" pytest-timeout \
      || echo "!! could not install $module: carry the .whl/ folder"
  fi
done

echo "== devices"
python3 -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee "$OUT_DIR/devices.txt"

echo "== tests on the GPU"
# tests/conftest.py defaults JAX to CPU; an empty JAX_PLATFORMS lets it pick the GPU. Float32 checks
# against NumPy need full-precision matmuls (TF32 would round them). The splash test needs 4 devices.
JAX_PLATFORMS="" JAX_DEFAULT_MATMUL_PRECISION=highest timeout 240 \
  python3 -m pytest -q -p no:cacheprovider tests/test_attention.py tests/test_model.py -k "not splash" \
  2>&1 | tee "$OUT_DIR/pytest.txt" | tail -n 25

export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
BENCH=(python3 benchmarks/model_step.py --config configs/llama_1b.py --steps 10 --warmup 2
       --out "$OUT_DIR/model_step.jsonl")

echo "== 1.1B step: cuDNN attention, one causal sequence per row (layers unrolled, the config default)"
timeout 150 "${BENCH[@]}" --attention cudnn 2>&1 | tee "$OUT_DIR/model_step_causal.txt" | grep -v "^W"
echo "== 1.1B step: cuDNN with 4 packed examples per row (dense segment mask)"
timeout 150 "${BENCH[@]}" --attention cudnn --segments 4 2>&1 | tee "$OUT_DIR/model_step_packed.txt" | grep -v "^W"
echo "== 1.1B step: XLA attention; its [batch, heads, q, k] scores for all layers do not fit 80 GB"
echo "   without remat, so the attention is recomputed in the backward pass (remat=save_dots)"
timeout 150 "${BENCH[@]}" --attention xla --config.model.remat=save_dots \
  2>&1 | tee "$OUT_DIR/model_step_xla.txt" | grep -v "^W"
echo "== 1.1B step: cuDNN, layer loop scanned"
timeout 150 "${BENCH[@]}" --attention cudnn --config.model.scan_layers=True \
  2>&1 | tee "$OUT_DIR/model_step_scanned.txt" | grep -v "^W"

echo "== summary ($OUT_DIR/model_step.jsonl)"
cat "$OUT_DIR/model_step.jsonl" 2>/dev/null
