#!/usr/bin/env bash
# The GPU figures that the engine and gradient-search issues ask for, in one prepared run.
#
#   bash experiments/device_check.sh prepare   # here, once: the wheels the GPU machine lacks
#   bash experiments/device_check.sh           # there: every check, under 9 minutes
#
# Parts, each under its own time limit so that one overrun leaves the others' results, most
# wanted first; each writes $OUT/<part>.log and prints the end of it:
#   env         GPU, versions, and an import of the benchmarks
#   population_small, population_large
#               experiments/benchmark.py, configs/benchmark_population.py: the vmapped
#               mixture, the switch supernet and the composed execution on each workload
#               (the large one with all 16 candidates vmapped)
#   search      experiments/benchmark.py, configs/benchmark_darts.py: every method, 5 steps
#   torch       experiments/reference_pytorch.py on the same GPU (the PyTorch column)
#   tests       a few test files on the GPU, with full-precision float32 matmuls
#
# The GPU machine has JAX, Flax, Optax, absl and PyTorch but not ml_collections: `prepare`
# downloads its wheel into .whl/ (ignored by git), and the run installs what .whl/ holds
# into /tmp/site. Everything else the benchmarks import is there (the dataset stack is not
# needed). The limits below add up to 515 s: run it with a timeout of ~560 s.
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = "prepare" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    -d .whl ml-collections==1.1.0 || exit 1
  # The Flax, Optax and chex this project is tested with, installed there only when the
  # machine's own do not import the benchmarks (see `env`).
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    -d .whl/pinned flax==0.12.8 optax==0.2.8 chex==0.1.92 || exit 1
  ls -lR .whl
  exit 0
fi

OUT=${OUT:-/tmp/device_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# Several processes may share the GPU (pytest workers): allocate on demand.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit} s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "-- $name: exit $? after $((SECONDS - start)) s"
  grep -v -e '^WARNING' -e 'Warning' "$OUT/$name.log" | tail -n 30
}

# SMOKE=1: the same parts at toy sizes, to check this script on a machine without a GPU.
SMALL=() LARGE=() SEARCH=()
if [ "${SMOKE:-0}" = 1 ]; then
  SMALL=(--config.workloads.small.candidates=2 --config.workloads.small.steps=2)
  LARGE=(--config.workloads.large.channels=4 --config.workloads.large.cells_per_stage=1
         --config.workloads.large.input_shape="(8,8,3)" --config.workloads.large.candidates=2
         --config.workloads.large.vmap_candidates=2 --config.workloads.large.steps=2)
  SEARCH=(--config.channels=4 --config.cells_per_stage=1 --config.input_shape="(8,8,3)"
          --config.steps=1)
fi

IMPORT_CHECK="
import jax, flax, optax
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__)
print(jax.devices())
import nas_jax.benchmark, nas_jax.search_benchmark
print('the benchmarks import')"
part env 30 bash -c "nvidia-smi -L; $PY -c \"$IMPORT_CHECK\""
if ! grep -q 'the benchmarks import' "$OUT/env.log" && compgen -G ".whl/pinned/*.whl" > /dev/null
then  # the machine's Flax/Optax/chex do not run this code: the tested versions instead
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site_pinned .whl/pinned/*.whl || exit 1
  export PYTHONPATH=/tmp/site_pinned${PYTHONPATH:+:$PYTHONPATH}
  mv "$OUT/env.log" "$OUT/env_own.log"
  part env 30 bash -c "$PY -c \"$IMPORT_CHECK\""
fi

part population_small 90 $PY experiments/benchmark.py --config=configs/benchmark_population.py \
  --config.run="('small',)" --config.workloads.small.executions="('vmap','switch','composed')" \
  "${SMALL[@]}"

part population_large 150 $PY experiments/benchmark.py \
  --config=configs/benchmark_population.py --config.run="('large',)" \
  --config.workloads.large.executions="('vmap','switch','composed')" \
  --config.workloads.large.vmap_candidates=16 "${LARGE[@]}"

part search 140 $PY experiments/benchmark.py --config=configs/benchmark_darts.py \
  --config.steps=5 \
  --config.methods="('darts1','gdas','gdas_switch','random_path','random_path_composed','darts2')" \
  "${SEARCH[@]}"

if [ "${SMOKE:-0}" = 1 ]; then
  echo "== torch: left out (SMOKE=1)"
else
  part torch 60 $PY experiments/reference_pytorch.py --what=search,population \
    --device=cuda
fi

# Tests on the GPU: the NB201 networks (supernet == standalone), the composed execution, and
# the executions against each other; files that need no dataset stack (TFDS is not there).
# float32 matmuls and convolutions at full precision (the default allows TF32 there, which
# the equality tolerances are not set for), XLA's default optimisations (conftest lowers
# them for the CPU suite).
part tests 45 env JAX_DEFAULT_MATMUL_PRECISION=highest NAS_JAX_TEST_XLA_OPT=1 \
  $PY -m pytest -q -p no:cacheprovider -o addopts="--import-mode=importlib" -n 4 \
  --dist loadfile tests/supernet/test_nb201_network.py tests/supernet/test_composed.py \
  tests/evaluators/test_executors.py
