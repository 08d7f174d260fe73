#!/usr/bin/env bash
# modelhost against peer model servers (MLServer, BentoML, KServe, Ray Serve, a bare Starlette
# floor): one run, same model file, same request, same pinning. See docs/performance.md.
#
#   benchmarks/peers.sh                       # default: starlette mlserver_batch bentoml_batch
#                                             #   modelhost modelhost_inline modelhost_batch
#   benchmarks/peers.sh starlette mlserver_batch modelhost modelhost_granian
#   RUNS=3 DUR=10 CONCS="1 16 64" TOOLS="wrk py" benchmarks/peers.sh ...
#
# 1. copies the harness (../shared/bench, or $PEERBENCH_SRC) to $PEERBENCH (default
#    /tmp/peerbench) unless a copy is there; runs its setup.sh (~5 min: apt tools, peer venvs,
#    trains model/model.joblib) when a needed venv or the model is missing;
# 2. wraps the harness's model/model.joblib in a modelhost.yaml (runtime sklearn, task
#    classification, input_schema: an array of 30 numbers) and pushes it into a fresh
#    MODELHOST_HOME per modelhost case;
# 3. adds the modelhost cases to run_all.sh's def() and make_table.py (benchmarks/peers_patch.py);
# 4. runs the chosen servers RUNS times (each server pinned with taskset -c 0, the load
#    generator on CPU 1) and prints the combined table (per cell, the median undisturbed run).
#
# modelhost cases (each `modelhost serve --no-demo --grpc-port 0`, full default request path:
# request id, JSON envelope + input-schema validation, limits, Prometheus metrics; no access log;
# the peers have no authentication, so MODELHOST_AUTH__ENABLED=false, and the default rate limit
# of the (then anonymous) caller, 6,000 requests/minute, is raised out of reach; the limiter
# still runs on every request):
#   modelhost          defaults (uvicorn; inference in the thread pool)
#   modelhost_inline   manifest options.inline: true (model called on the event loop)
#   modelhost_batch    manifest batching: {max_batch_size: 32, max_batch_delay_ms: 2}
#   modelhost_granian  serve --server granian
#   modelhost_before   the code under $BEFORE_SRC with this venv, e.g.
#                      git archive <rev> src | tar -x -C /tmp/before; BEFORE_SRC=/tmp/before/src
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SRC=${PEERBENCH_SRC:-$REPO/../shared/bench}
BENCH=${PEERBENCH:-/tmp/peerbench}
export MODELHOST=${MODELHOST_BIN:-$REPO/.venv/bin/modelhost}
export BEFORE_SRC=${BEFORE_SRC:-}
RUNS=${RUNS:-1}
export DUR=${DUR:-10} CONCS=${CONCS:-"1 16 64"} TOOLS=${TOOLS:-wrk} RAW=${RAW:-0}
export QUIET_WAIT=${QUIET_WAIT:-120} MAX_TRIES=${MAX_TRIES:-2}
SERVERS=${*:-starlette mlserver_batch bentoml_batch modelhost modelhost_inline modelhost_batch}

[ -d "$BENCH" ] || cp -r "$SRC" "$BENCH"
cd "$BENCH"
need_setup=0
for s in $SERVERS; do
  case $s in
    mlserver*) venv=mlserver;; bentoml*) venv=bentoml;; rayserve*) venv=rayserve;;
    kserve) venv=kserve;; *) venv=base;;
  esac
  [ -x "venvs/$venv/bin/python" ] || need_setup=1
done
[ -f model/model.joblib ] || need_setup=1
if [ "$need_setup" = 1 ]; then
  echo "== running the harness's setup.sh (peer venvs, ~5 min)"
  ./setup.sh
fi

# -- the modelhost model version around the harness's model file ------------------------------
venvs/base/bin/python -c "
import json
rows = json.load(open('bodies/instances_1.json'))['instances']
open('bodies/modelhost_1.json', 'w').write(json.dumps({'inputs': rows}))"

for case_ in modelhost modelhost_inline modelhost_batch modelhost_granian modelhost_before; do
  dir="$BENCH/modelhost/$case_"
  rm -rf "$dir"; mkdir -p "$dir/cancer-1.0.0"
  cp bodies/modelhost_1.json "bodies/$case_.json"
  cp model/model.joblib "$dir/cancer-1.0.0/model.joblib"
  {
    echo "name: cancer"
    echo "version: 1.0.0"
    echo "runtime: sklearn"
    echo "task: classification"
    echo "artifacts: {model: model.joblib}"
    echo "input_schema: {type: array, items: {type: number}, minItems: 30, maxItems: 30}"
    case $case_ in
      modelhost_inline) echo "options: {inline: true}";;
      modelhost_batch) echo "batching: {max_batch_size: 32, max_batch_delay_ms: 2}";;
    esac
  } > "$dir/cancer-1.0.0/modelhost.yaml"
  if [ "$case_" = modelhost_before ]; then
    [ -n "$BEFORE_SRC" ] || continue  # pushed by the old code, whose manifest it must parse
    env PYTHONPATH="$BEFORE_SRC" MODELHOST_HOME="$dir/home" "$MODELHOST" models push \
      "$dir/cancer-1.0.0" --stage production >/dev/null
    continue
  fi
  MODELHOST_HOME="$dir/home" "$MODELHOST" models push "$dir/cancer-1.0.0" --stage production \
    >/dev/null
  # auth stays on: a real API key (rate limit counted on every request, set out of reach), sent
  # by wrk/post.lua, which reads bodies/<case>.key beside bodies/<case>.json
  MODELHOST_HOME="$dir/home" "$MODELHOST" keys create --tenant bench --principal wrk \
    --scope predict --rpm 1000000000 | tail -n 1 | tr -d '\n' > "bodies/$case_.key"
done
cp "$SRC/wrk/post.lua" wrk/post.lua
cat >> wrk/post.lua <<'LUA'
local key_file = io.open((path:gsub("%.json$", ".key")), "rb")
if key_file then
  wrk.headers["Authorization"] = "Bearer " .. key_file:read("*a")
  key_file:close()
end
LUA

# -- register the cases in the harness (on fresh copies of its two files) ----------------------
cp "$SRC/run_all.sh" run_all.sh; cp "$SRC/scripts/make_table.py" scripts/make_table.py
venvs/base/bin/python "$REPO/benchmarks/peers_patch.py" "$BENCH"

# -- run -----------------------------------------------------------------------------------------
stamp=$(date +%Y%m%d-%H%M%S)
outs=()
for r in $(seq "$RUNS"); do
  out="results/modelhost-$stamp-run$r"
  # shellcheck disable=SC2086  # SERVERS is a word list
  OUT=$out ./run_all.sh $SERVERS
  outs+=("$out")
done
echo
echo "== combined table: $BENCH/${outs[*]}"
venvs/base/bin/python scripts/make_table.py "${outs[@]}"
