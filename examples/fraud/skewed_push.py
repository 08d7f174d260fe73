"""A deliberately skewed serving path: a hand-written online feature job with a classic bug.

Teams often compute serving features a second time, in a "real-time" job written apart from the
batch pipeline that made the training data, and push the results straight into the online
store. This script is such a job. It reads the raw transactions and recomputes
``customer_stats`` the way its author understood the definition, and one line of it is a
copy-paste slip: ``avg_amount_7d`` is averaged over the 30-day window.

Nothing fails. The values are plausible dollar amounts, the model still answers, and its scores
even look reasonable. Only comparing what was served with what the offline definition gives
for the same customer at the same moment (``modelhost featurestore skew fraud``) shows that
``avg_amount_7d``, and ``amount_to_avg_ratio`` computed from it, are not what the model was
trained on.

The store is opened with :func:`modelhost.featurestore.open_store`, which reads modelhost's
settings from the environment as the server does, so the values land in the online store the
server reads: the SQLite file of the repository, or Redis when ``MODELHOST_REDIS_URL`` is set.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from modelhost.featurestore import open_store

HERE = Path(__file__).resolve().parent
DEFAULT_REPO = HERE / "feature_repo"
DEFAULT_EVENTS = HERE / "work" / "transactions.parquet"
VIEW = "customer_stats"


def skewed_customer_stats(events: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """``customer_stats`` of every customer active in the 30 days before ``as_of``, with the bug.

    Everything else matches the batch definition in ``generate.py`` on purpose (same windows
    ending at the same midnight, same rounding), so that the skew check points at one feature.
    """
    stamp = events["event_timestamp"]
    last_7 = events[(stamp >= as_of - pd.Timedelta(days=7)) & (stamp < as_of)]
    last_30 = events[(stamp >= as_of - pd.Timedelta(days=30)) & (stamp < as_of)]
    by_7 = last_7.groupby("customer_id")["amount"]
    by_30 = last_30.groupby("customer_id")["amount"]
    table = pd.DataFrame(
        {
            "txn_count_7d": by_7.count(),
            "avg_amount_7d": by_30.mean(),  # BUG: the 30-day window, copied from the line below
            "max_amount_7d": by_7.max(),
            "avg_amount_30d": by_30.mean(),
        }
    ).reindex(by_30.mean().index)
    table = table.fillna({"txn_count_7d": 0, "max_amount_7d": 0.0}).round(
        {"avg_amount_7d": 2, "avg_amount_30d": 2}
    )
    return table.astype({"txn_count_7d": "int64"}).reset_index()


def main(argv: list[str] | None = None) -> None:
    """Compute the skewed values and write them to the online store, stamped now."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=DEFAULT_REPO)
    parser.add_argument("--events", type=Path, default=DEFAULT_EVENTS)
    args = parser.parse_args(argv)

    events = pd.read_parquet(args.events)
    # The job summarises up to the end of the data, the same midnight as the batch job's last row.
    as_of = events["event_timestamp"].max().ceil("D")
    table = skewed_customer_stats(events, as_of)
    # Stamped now, so these rows replace the materialised ones and count as fresh.
    table["event_timestamp"] = pd.Timestamp(datetime.now(UTC))

    # Without arguments, open_store reads MODELHOST_REDIS_URL and
    # MODELHOST_FEATURE_STORE__ONLINE_STORE from the environment, as the server does.
    store = open_store(args.repo)
    store.write_to_online_store(VIEW, table)
    kind = store.config.online_store.type
    print(f"wrote {len(table):,} skewed {VIEW} rows (as of {as_of:%Y-%m-%d}) to the {kind} store")
    print(table.head(5).to_string(index=False))


if __name__ == "__main__":
    main()
