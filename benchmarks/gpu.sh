#!/usr/bin/env bash
# ResNet-34 / CIFAR-10 (synthetic data) step benchmarks on an NVIDIA GPU.
#
# Usage, from anywhere inside the repository:
#
#   bash benchmarks/gpu.sh [RESULTS_JSON]
#
# RESULTS_JSON defaults to "$OUT/gpu_results.json" when $OUT is set, else
# benchmarks/gpu_results.json; the markdown table goes next to it (.md).
#
# The machine may have no internet access. CUDA JAX is then installed from
# wheels carried in the repository's .whl/ folder (jax, jaxlib,
# jax-cuda12-plugin, jax-cuda12-pjrt, the nvidia-* CUDA wheels and every
# dependency in requirements.txt, for this machine's Python); without a .whl/
# folder it runs `pip install "jax[cuda12]"` from the index.
#
# Environment knobs:
#   PYTHON     interpreter for the virtualenv (default: python3)
#   VENV       virtualenv directory (default: .venv-gpu)
#   ONLY       --only pattern of benchmarks.run (default: ^resnet34/)
#   EXTRA_ARGS further benchmarks.run arguments (e.g. "--quick")
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv-gpu}"
ONLY="${ONLY:-^resnet34/}"
if [ "$#" -ge 1 ]; then
  RESULTS="$1"
elif [ -n "${OUT:-}" ]; then
  RESULTS="$OUT/gpu_results.json"
else
  RESULTS="benchmarks/gpu_results.json"
fi
mkdir -p "$(dirname "$RESULTS")"

echo "== machine"
uname -m
"$PYTHON" --version
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  || echo "nvidia-smi not available"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

echo "== install"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  # Offline: everything from the carried wheels.
  "$PY" -m pip install -q --no-index --find-links .whl "jax[cuda12]" \
    -r requirements.txt
  "$PY" -m pip install -q --no-index --find-links .whl --no-deps \
    --no-build-isolation -e . \
    || "$PY" -m pip install -q --no-index --find-links .whl --no-deps -e .
else
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "jax[cuda12]" -r requirements.txt
  "$PY" -m pip install -q --no-deps -e .
fi

echo "== devices"
"$PY" - <<'EOF'
import jax
print(jax.__version__, jax.default_backend(), jax.devices())
if jax.default_backend() != 'gpu':
  raise SystemExit('no GPU backend: refusing to report GPU numbers')
EOF

echo "== benchmarks"
# shellcheck disable=SC2086
"$PY" -m benchmarks.run --only "$ONLY" --no-torch --no-parallel \
  --out "$RESULTS" --markdown "${RESULTS%.json}.md" ${EXTRA_ARGS:-}
echo "wrote $RESULTS and ${RESULTS%.json}.md"
