#!/bin/bash
# The GPU checks as one command for a lent device machine (which has torch with CUDA but no Hydra).
# Prepare here, once, in the repository root (.whl/ is git-ignored; name it in the device tool's `carry`):
#   pip download --no-deps -d .whl hydra-core==1.3.8 omegaconf==2.3.1 hydra-joblib-launcher==1.2.0
#   pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
#   mkdir -p .whl/fmnist && cp /usr/share/datasets/fashion-mnist/*.gz .whl/fmnist/
#   optional, for PROFILE=1: pip download --no-deps --only-binary=:all: --platform manylinux1_x86_64 -d .whl py-spy
# Then run there:  bash benchmarks/gpu_device.sh
#   env: T_TESTS, T_BENCH, SECTIONS (gpu.py's, default "ensembles singles"), GRID=1 (the whole grid
#   command, graphed, against the basic launcher), PROFILE=1 (py-spy timelines of the grid command
#   and of a 64-member ensemble, speedscope JSON, one profile per thread, samples in time order)
# Each step has its own time limit, so one that fails or runs long loses only itself.
# Results land in $OUT (the device tool's folder that comes back), or ./gpu-out elsewhere.
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PARAMLAB_DEBIAN_DATA=$PWD/.whl/fmnist PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c "import torch, hydra; print('torch', torch.__version__, 'hydra', hydra.__version__, torch.cuda.get_device_name(0))"
T0=$(date +%s)
stamp() { echo "== $1: $(( $(date +%s) - T0 )) s"; }
timeout "${T_TESTS:-170}" python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/tests.log" | tail -40
stamp tests
timeout "${T_BENCH:-260}" python3 benchmarks/gpu.py ${SECTIONS:-ensembles singles} --out "$OUT/results_gpu.json" 2>&1 | grep -v "^{" | tee "$OUT/bench.log"
stamp bench
if [ -n "${GRID:-}" ]; then
  timeout "${T_GRID:-90}" python3 benchmarks/ensemble_speedup.py --device cuda --epochs 3 2>&1 | tee -a "$OUT/bench.log"
  stamp grid
fi
if [ -n "${PROFILE:-}" ] && [ -x /tmp/site/bin/py-spy ]; then
  SPY="/tmp/site/bin/py-spy record --idle --threads --rate 200 --format speedscope"
  timeout "${T_PROF:-60}" $SPY --subprocesses -o "$OUT/prof_grid.json" -- python3 -m runner.train -m \
      experiment=lr_dropout_grid device=cuda trainer.epochs=3 hydra.sweep.dir=/tmp/prof_grid 2>&1 | tail -5
  stamp "grid profiled"
  timeout "${T_PROF:-60}" $SPY -o "$OUT/prof_e64.json" -- python3 -c "
import sys, time; sys.path.insert(0, 'benchmarks'); t = time.perf_counter()
import gpu; print('64 members, stats:', gpu.ensemble(64, 3, 'trainer.compile=true', 'snapshot.tensors=false'), time.perf_counter() - t)" 2>&1 | tail -3
  stamp "ensemble profiled"
fi
