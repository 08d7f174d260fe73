#!/usr/bin/env bash
# modelhost against peer model servers (MLServer, BentoML, KServe, Ray Serve, a bare Starlette
# floor), one run, same model file, same request, same pinning. See docs/performance.md.
#
#   benchmarks/peers.sh                          # default subset, wrk, 10 s per cell
#   benchmarks/peers.sh starlette mlserver_batch bentoml_batch modelhost modelhost_batch
#   DUR=10 CONCS="1 16 64" TOOLS="wrk py" RUNS=3 benchmarks/peers.sh ...
#
# What it does:
#   1. copies the harness (../shared/bench, or $PEERBENCH_SRC) to $PEERBENCH (default
#      /tmp/peerbench) unless a copy is already there; runs its setup.sh (~5 min: apt tools,
#      peer venvs, trains model/model.joblib) when the venvs or the model are missing;
#   2. wraps the harness's model/model.joblib in a modelhost.yaml (runtime sklearn, task
#      classification, input_schema: array of 30 numbers) and pushes it into a fresh
#      MODELHOST_HOME per modelhost case (plain, and with adaptive batching 32 / 2 ms);
#   3. adds the modelhost cases to run_all.sh's def() and to make_table.py's DESC;
#   4. runs the chosen servers (each pinned with taskset -c 0, load generator on CPU 1) RUNS
#      times and prints the combined table (per cell, the median undisturbed run).
#
# modelhost runs its full default request path: request id, JSON envelope and input-schema
# validation, limits, Prometheus metrics, inference off the event loop; no access log (the
# default), started as `modelhost serve --no-demo --grpc-port 0`.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SRC=${PEERBENCH_SRC:-$REPO/../shared/bench}
BENCH=${PEERBENCH:-/tmp/peerbench}
MODELHOST=${MODELHOST_BIN:-$REPO/.venv/bin/modelhost}
RUNS=${RUNS:-1}
export DUR=${DUR:-10} CONCS=${CONCS:-"1 16 64"} TOOLS=${TOOLS:-wrk} RAW=${RAW:-0}
SERVERS=${*:-starlette mlserver_batch bentoml_batch modelhost modelhost_batch}

if [ ! -d "$BENCH" ]; then
  cp -r "$SRC" "$BENCH"
fi
cd "$BENCH"
need_setup=0
for v in $SERVERS; do
  case $v in
    starlette|fastapi|modelhost*) venv=base;;
    mlserver*) venv=mlserver;; bentoml*) venv=bentoml;; rayserve*) venv=rayserve;; kserve) venv=kserve;;
    *) venv=base;;
  esac
  [ -x "venvs/$venv/bin/python" ] || need_setup=1
done
[ -f model/model.joblib ] && [ -x venvs/base/bin/python ] || need_setup=1
if [ "$need_setup" = 1 ]; then
  echo "== running the harness's setup.sh (peer venvs, ~5 min)"
  ./setup.sh
fi

# -- the modelhost model version around the harness's model file ------------------------------
ROW=$(venvs/base/bin/python -c "import json; print(json.dumps(json.load(open('bodies/instances_1.json'))['instances']))")
echo "{\"inputs\": $ROW}" > bodies/modelhost_1.json

make_version() {  # $1 = directory, $2 = extra manifest lines
  rm -rf "$1"; mkdir -p "$1"
  cp model/model.joblib "$1/model.joblib"
  cat > "$1/modelhost.yaml" <<EOF
name: cancer
version: 1.0.0
runtime: sklearn
task: classification
artifacts: {model: model.joblib}
input_schema:
  type: array
  items: {type: number}
  minItems: 30
  maxItems: 30
card:
  description: peerbench model, Pipeline(StandardScaler, LogisticRegression) on breast cancer
$2
EOF
}
for case_ in modelhost modelhost_batch; do
  home="$BENCH/modelhost/$case_/home"
  extra=""
  [ "$case_" = modelhost_batch ] && extra="batching: {max_batch_size: 32, max_batch_delay_ms: 2}"
  make_version "$BENCH/modelhost/$case_/cancer-1.0.0" "$extra"
  rm -rf "$home"
  MODELHOST_HOME=$home "$MODELHOST" models push "$BENCH/modelhost/$case_/cancer-1.0.0" \
    --stage production >/dev/null
done

# -- register the cases in the harness (idempotent) -------------------------------------------
if ! grep -q 'modelhost)' run_all.sh; then
  MH_CASES=$(cat <<EOF
    modelhost|modelhost_batch)
               CWD=.; PORT=8010; CMD="env MODELHOST_HOME=$BENCH/modelhost/\$n/home $MODELHOST serve --no-demo --grpc-port 0 --host 127.0.0.1 --port \$PORT --log-level warning"
               READY=/readyz; URL=/v1/models/cancer/predict; BODY=bodies/modelhost_1.json; EXPECT='"results"';;
EOF
)
  MH_CASES="$MH_CASES" venvs/base/bin/python - <<'EOF'
import os
path = "run_all.sh"
text = open(path).read()
text = text.replace("  case $n in\n", "  case $n in\n" + os.environ["MH_CASES"] + "\n", 1)
text = text.replace('rayserve_batch kserve"', 'rayserve_batch kserve modelhost modelhost_batch"', 1)
open(path, "w").write(text)
path = "scripts/make_table.py"
text = open(path).read()
text = text.replace('"fastapi", "mlserver",', '"fastapi", "modelhost", "modelhost_batch", "mlserver",', 1)
text = text.replace(
    "DESC = {\n",
    "DESC = {\n"
    '    "modelhost": "modelhost serve (default server, full request path: request id, '
    'validation, metrics; inference in its thread pool), no batching",\n'
    '    "modelhost_batch": "modelhost, manifest batching max_batch_size=32 '
    'max_batch_delay_ms=2",\n',
    1,
)
open(path, "w").write(text)
EOF
fi

# -- run -----------------------------------------------------------------------------------------
stamp=$(date +%Y%m%d-%H%M%S)
outs=()
for r in $(seq "$RUNS"); do
  out="results/modelhost-$stamp-run$r"
  OUT=$out ./run_all.sh $SERVERS
  outs+=("$out")
done
echo
echo "== combined table (${outs[*]})"
venvs/base/bin/python scripts/make_table.py "${outs[@]}"
