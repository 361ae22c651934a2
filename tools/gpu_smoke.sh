#!/usr/bin/env bash
# GPU smoke test: every task family trains a few iterations with --device cuda and is evaluated,
# the benchmark runs on CUDA, and a one-process torchrun job uses NCCL.
#
#   tools/gpu_smoke.sh [PYTHON] [OUT]     (defaults: .venv/bin/python, a temporary folder)
#
# Families that need user data (omniglot, mini-imagenet, tiered-imagenet, cifar-fs, fc100) run
# when METAKIT_DATA_<NAME> points at their files (e.g. METAKIT_DATA_OMNIGLOT=/data/omniglot),
# and are listed as skipped otherwise; halfcheetah-* need gymnasium's MuJoCo environments and run
# when `import gymnasium, mujoco` works. Prints one line per check and a summary; exits non-zero
# if any check failed. Nothing is downloaded.
set -uo pipefail
PY=${1:-.venv/bin/python}
OUT=${2:-$(mktemp -d)}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
failed=0
metakit() { "$PY" -m metakit "$@"; }

check() {  # check NAME COMMAND...: run it, log to OUT/NAME.log, say ok/FAILED with the wall time
    local name=$1
    shift
    local start=$SECONDS
    if "$@" >"$OUT/$name.log" 2>&1; then
        echo "ok      $name ($((SECONDS - start)) s)"
    else
        echo "FAILED  $name ($((SECONDS - start)) s): see $OUT/$name.log"
        failed=1
    fi
}

"$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || {
    echo "no CUDA device visible to $PY; nothing to test"
    exit 2
}
"$PY" -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0))"

small="--iterations 3 --meta-batch 4 --log-every 1 --quiet --device cuda"
for task in sinusoid harmonic sinusoid-line glyphs; do
    check "train-$task" metakit train --task "$task" $small --out "$OUT/$task"
    check "eval-$task" metakit eval "$OUT/$task" --tasks 20
done
check "train-sinusoid-enhanced-compiled" \
    metakit train --method enhanced --inner-steps 5 $small --compile on --out "$OUT/enhanced"
for task in omniglot mini-imagenet tiered-imagenet cifar-fs fc100; do
    var="METAKIT_DATA_$(echo "$task" | tr 'a-z-' 'A-Z_')"
    if [ -n "${!var:-}" ]; then
        check "train-$task" metakit train --task "$task" $small --data-root "${!var}" --out "$OUT/$task"
        check "eval-$task" metakit eval "$OUT/$task" --tasks 20
    else
        echo "skipped train-$task (set $var to its data folder)"
    fi
done
check "train-nav2d" metakit train --task nav2d --iterations 2 --quiet --device cuda --out "$OUT/nav2d"
if "$PY" -c "import gymnasium, mujoco" 2>/dev/null; then
    check "train-halfcheetah-dir" \
        metakit train --task halfcheetah-dir --iterations 1 --quiet --device cuda --out "$OUT/hc"
else
    echo "skipped train-halfcheetah-dir (gymnasium's MuJoCo environments are not installed)"
fi
check "bench-sinusoid" metakit bench --device cuda --repeats 2 --min-time 0.2
check "bench-glyphs" metakit bench --task glyphs --device cuda --repeats 2
check "torchrun-nccl" "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m metakit train \
    $small --out "$OUT/torchrun"
grep -h "" "$OUT"/bench-*.log 2>/dev/null | sed 's/^/    /'
[ "$failed" = 0 ] && echo "all checks passed; logs in $OUT" || echo "some checks failed; logs in $OUT"
exit "$failed"
