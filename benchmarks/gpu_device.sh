#!/bin/bash
# The GPU checks as one command for a lent device machine (which has torch with CUDA but no Hydra).
# Prepare here, once, in the repository root (.whl/ is git-ignored; name it in the device tool's `carry`):
#   pip download --no-deps -d .whl hydra-core==1.3.8 omegaconf==2.3.1 hydra-joblib-launcher==1.2.0
#   pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
#   mkdir -p .whl/fmnist && cp /usr/share/datasets/fashion-mnist/*.gz .whl/fmnist/
# Then run there:  bash benchmarks/gpu_device.sh   (env: T_TESTS, T_BENCH, SECTIONS, GRID=1, T_GRID)
# Results land in $OUT (the device tool's folder that comes back), or ./gpu-out elsewhere.
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PARAMLAB_DEBIAN_DATA=$PWD/.whl/fmnist PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, hydra; print('torch', torch.__version__, 'hydra', hydra.__version__, torch.cuda.get_device_name(0))"
T0=$(date +%s)
timeout "${T_TESTS:-170}" python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/tests.log" | tail -40
echo "tests: $(( $(date +%s) - T0 )) s"
OUT_ABS=$(cd "$OUT" && pwd)
cd benchmarks || exit 3
timeout "${T_BENCH:-260}" python3 gpu.py ${SECTIONS:-ensembles singles} --out "$OUT_ABS/results_gpu.json" 2>&1 | grep -v "^{" | tee "$OUT_ABS/bench.log"
[ -n "${GRID:-}" ] && timeout "${T_GRID:-150}" python3 gpu.py grid --out "$OUT_ABS/results_gpu.json" 2>&1 | grep -v "^{" | tee -a "$OUT_ABS/bench.log"
echo "all: $(( $(date +%s) - T0 )) s"
