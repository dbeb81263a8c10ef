#!/usr/bin/env bash
# The GPU check of issue 13 as one command, sized to fit 8 minutes on the lent H200 machine:
#
#   bash bench/gpu_suite.sh [--device cuda|cpu] [--quick]
#
# Everything lands in $OUT (default ./gpu-suite-out), 7 files, within the 8 the device tool brings back:
#   suite.json        the machine; every step's seconds, exit code and the end of its log; the searches' figures
#   suite.log         every step's whole output, in order
#   gpu-tests.xml     the CUDA tests' JUnit report
#   bench.json, bench-overhead.json, bench-decode.json    python -m bench's records
#   gpu-results.json  all the records, each with the device as torch names it (commit as bench/gpu-results.json)
# With a .whl folder in the repository root (../shared/gpu/wheels.sh makes it: Ray and Optuna are not on
# the lent machine), its wheels are installed first. Then, each step time-boxed with `timeout`, so that a
# step that fails or hangs leaves the later ones their turn:
#   gpu-tests       the CUDA tests: pytest -m gpu tests/gpu (each skips without CUDA)
#   bench           python -m bench: data, train, features, sharing, startup at full sizes, bounded
#   bench-overhead  python -m bench --quick --cases overhead liar: what Ray and Optuna cost (searches)
#   bench-decode    python -m bench --cases decode: photo-sized JPEGs decoded on every core (issue 14)
#   search-asha     one real search over a generated 4-class set (4,000 JPEGs at 299 px): 8 trials,
#   search-full     the same trials with ASHA, then without early stopping; wall time, useful fraction
# --quick shrinks every step: the CPU dry run (tests/bench/test_gpu_suite.py) checks the command so it
# cannot rot between GPU sessions. $PYTHON (default python3) runs it all; $WORK (default: a temporary
# folder, removed at the end) holds the generated data and the searches; $SUITE_COMMIT names the commit
# where no .git travelled; $SUITE_STEPS (names, space-separated) runs those steps alone (CI's dry run
# leaves out the steps other tests run). Exit status: 0 when every step passed, 1 when one failed, 2 for a
# bad option.
set -uo pipefail
cd "$(dirname "$0")/.."

usage="usage: bash bench/gpu_suite.sh [--device cuda|cpu] [--quick]"
DEVICE=cuda
QUICK=()
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=${2:-}; shift $(( $# > 1 ? 2 : 1 )) ;;
    --device=*) DEVICE=${1#*=}; shift ;;
    --quick) QUICK=(--quick); shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "error: $1: unknown option; $usage" >&2; exit 2 ;;
  esac
done
case $DEVICE in
  cuda|cpu) ;;
  *) echo "error: --device: '$DEVICE' is not allowed; one of: cuda, cpu" >&2; exit 2 ;;
esac

PY=${PYTHON:-python3}
OUT=${OUT:-./gpu-suite-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
rm -f "$OUT"/{suite.json,suite.log,gpu-tests.xml,bench.json,bench-overhead.json,bench-decode.json,gpu-results.json}
if [ -n "${WORK:-}" ]; then
  mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd) || exit 2
else
  WORK=$(mktemp -d) || exit 2
  trap 'rm -rf "$WORK"' EXIT
fi
LOG=$OUT/suite.log
: > "$LOG"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ ${#QUICK[@]} -gt 0 ]; then
  # The CPU dry run: every step as small as its command allows, the start-up case left to its own
  # test (tests/bench/test_bench.py); ~3 minutes on 2 idle cores. The limits only catch a hang.
  LIMIT_WHEELS=60 LIMIT_TESTS=480 LIMIT_BENCH=480 LIMIT_OVERHEAD=480 LIMIT_SEARCH=480
  BENCH_CASES=(all)
  BENCH_SIZES=(--quick --images 64 --size-px 64 --archs small_cnn --rounds 1 --batches 1 --batch-size 4 --sharing 2)
  OVERHEAD_SIZES=(--images 64 --size-px 64)
  DECODE_SIZES=(--photos 8 --rounds 1)
  LIMIT_DECODE=240
else
  # On the H200 (16 cores), expected: wheels 20 s, tests 80 s, bench 120 s, overhead 70 s, decode 45 s,
  # searches 90 s (generating and decoding the data included) and 70 s: ~8 minutes; one step running to
  # its limit still ends within the device tool's 10 minutes. bench: 2,000 JPEGs at 299 px (its cache build and
  # naive epoch without workers decode serially: 4,000 would double them), the issue's batch of 128,
  # 2 rounds of 20 timed steps a case.
  LIMIT_WHEELS=60 LIMIT_TESTS=150 LIMIT_BENCH=180 LIMIT_OVERHEAD=120 LIMIT_SEARCH=150
  BENCH_CASES=(all startup)
  BENCH_SIZES=(--images 2000 --rounds 2 --batches 20 --batch-size 128)
  OVERHEAD_SIZES=()
  # Issue 14's decode figure on 16 cores (>= 20x the serial full decode): 320 photos, generated
  # on every core (~10 s), then ~9 s a round for the serial baseline, ~8 s for the 3 others together.
  DECODE_SIZES=(--photos 320 --rounds 2)
  LIMIT_DECODE=60
fi

failed=0
step() {  # step NAME LIMIT_S COMMAND...: run it under `timeout`, its output to the console and suite.log
  local name=$1 limit=$2 from started code
  shift 2
  if [ -n "${SUITE_STEPS:-}" ] && [[ " $SUITE_STEPS " != *" $name "* ]]; then
    return 0
  fi
  from=$(wc -c < "$LOG")
  started=$(date +%s.%N)
  echo "=== $name (at most $limit s): $*" | tee -a "$LOG"
  # TERM at the limit (a search then stops its trials cleanly), KILL 20 s later.
  timeout -k 20 "$limit" "$@" 2>&1 | tee -a "$LOG"
  code=${PIPESTATUS[0]}
  [ "$code" -eq 0 ] || failed=1
  "$PY" -m bench.suite step --out "$OUT" --name "$name" --command "$*" --limit-s "$limit" --started "$started" \
    --ended "$(date +%s.%N)" --exit-code "$code" --log-from "$from" 2>&1 | tee -a "$LOG"
}

commit=${SUITE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
wheels=none
if compgen -G ".whl/*.whl" > /dev/null; then
  wheels="$(find .whl -maxdepth 1 -name '*.whl' | wc -l) wheels from .whl"
fi
"$PY" -m bench.suite begin --out "$OUT" --device "$DEVICE" "${QUICK[@]}" --commit "$commit" --wheels "$wheels" \
  2>&1 | tee -a "$LOG"
if [ "$wheels" != none ]; then
  # The pip line of ../shared/gpu/wheels.sh's header.
  step wheels "$LIMIT_WHEELS" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
step gpu-tests "$LIMIT_TESTS" "$PY" -m pytest -m gpu tests/gpu -q -p no:cacheprovider --junitxml "$OUT/gpu-tests.xml"
step bench "$LIMIT_BENCH" "$PY" -m bench --device "$DEVICE" --cases "${BENCH_CASES[@]}" "${BENCH_SIZES[@]}" \
  --json "$OUT/bench.json"
step bench-overhead "$LIMIT_OVERHEAD" "$PY" -m bench --device "$DEVICE" --quick --cases overhead liar \
  "${OVERHEAD_SIZES[@]}" --json "$OUT/bench-overhead.json"
step bench-decode "$LIMIT_DECODE" "$PY" -m bench --device "$DEVICE" --cases decode --size-px 299 "${DECODE_SIZES[@]}" \
  --json "$OUT/bench-decode.json"
for mode in asha full; do
  step "search-$mode" "$LIMIT_SEARCH" "$PY" -m bench.suite search "$mode" --out "$OUT" --work "$WORK" \
    --device "$DEVICE" "${QUICK[@]}"
done
"$PY" -m bench.suite finish --out "$OUT" 2>&1 | tee -a "$LOG"
exit "$failed"
