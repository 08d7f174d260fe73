"""Add the modelhost cases to a copy of the peer benchmark harness (used by peers.sh).

    python benchmarks/peers_patch.py /tmp/peerbench

Inserts one ``modelhost*)`` entry into ``run_all.sh``'s ``def()`` (as the harness README's
"Adding the new project" asks: CWD, CMD, PORT, READY, URL, BODY, EXPECT) and the descriptions
and table order into ``scripts/make_table.py``. Idempotent. The command line reads
``$MODELHOST`` (the ``modelhost`` executable) and ``$BEFORE_SRC`` at run time.
"""

from __future__ import annotations

import sys
from pathlib import Path

CASE = """\
    modelhost*)
               CWD=.; PORT=8010; MHARGS=""
               MHENV="MODELHOST_HOME=$ROOT/modelhost/$n/home"
               [ "$n" = modelhost_granian ] && MHARGS="--server granian"
               [ "$n" = modelhost_before ] && MHENV="$MHENV PYTHONPATH=${BEFORE_SRC:?}"
               CMD="env $MHENV $MODELHOST serve --no-demo --grpc-port 0"
               CMD="$CMD --host 127.0.0.1 --port $PORT --log-level warning $MHARGS"
               READY=/readyz; URL=/v1/models/cancer/predict
               BODY=bodies/$n.json; EXPECT='"results"';;
"""

DESC = {
    "modelhost": "modelhost serve (uvicorn; full request path: request id, JSON + input-schema "
    "validation, limits, Prometheus metrics; inference in its thread pool)",
    "modelhost_inline": "modelhost, manifest options.inline: true (model called on the event "
    "loop, no thread hop)",
    "modelhost_batch": "modelhost, manifest batching max_batch_size=32 max_batch_delay_ms=2 "
    "(thread pool)",
    "modelhost_granian": "modelhost serve --server granian, thread pool",
    "modelhost_before": "modelhost before the hot-path work (code from BEFORE_SRC; uvicorn)",
}
ORDER = [
    "modelhost",
    "modelhost_inline",
    "modelhost_batch",
    "modelhost_granian",
    "modelhost_before",
]


def main() -> None:
    """Patch ``run_all.sh`` and ``scripts/make_table.py`` under the given harness copy."""
    root = Path(sys.argv[1])
    run_all = root / "run_all.sh"
    text = run_all.read_text()
    if "modelhost*)" not in text:
        text = text.replace("  case $n in\n", "  case $n in\n" + CASE, 1)
        run_all.write_text(text)
    table = root / "scripts" / "make_table.py"
    text = table.read_text()
    if '"modelhost"' not in text:
        entries = "".join(f"    {key!r}: {value!r},\n" for key, value in DESC.items())
        text = text.replace("DESC = {\n", "DESC = {\n" + entries, 1)
        order = ", ".join(f'"{name}"' for name in ORDER)
        text = text.replace('"fastapi", "mlserver",', f'"fastapi", {order}, "mlserver",', 1)
        table.write_text(text)


if __name__ == "__main__":
    main()
