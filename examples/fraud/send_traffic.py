"""Send the fraud model some realistic traffic: the last day's payments, replayed.

Each request carries only what a payment system knows at the moment of paying (customer,
merchant, amount); modelhost adds the stored features. The skew check later recomputes these
served rows offline, so it needs some of them. Uses ``MODELHOST_API_KEY`` when set.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

import httpx
import pandas as pd

HERE = Path(__file__).resolve().parent
DEFAULT_EVENTS = HERE / "work" / "transactions.parquet"
BATCH = 50


def main(argv: list[str] | None = None) -> None:
    """Post ``--rows`` recent payments in batches and summarise the answers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="fraud")
    parser.add_argument("--events", type=Path, default=DEFAULT_EVENTS)
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args(argv)

    events = pd.read_parquet(args.events)
    recent = events[events["event_timestamp"] >= events["event_timestamp"].max().floor("D")]
    sample = recent.sample(n=min(args.rows, len(recent)), random_state=0)
    rows = sample[["customer_id", "merchant_id", "amount"]].to_dict("records")
    key = os.environ.get("MODELHOST_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}

    labels: Counter[str] = Counter()
    scored: list[tuple[float, dict[str, object]]] = []
    with httpx.Client(base_url=args.url, headers=headers, timeout=30) as client:
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            response = client.post(f"/v1/models/{args.model}/predict", json={"inputs": batch})
            response.raise_for_status()
            for row, result in zip(batch, response.json()["results"], strict=True):
                labels[result["label"]] += 1
                scored.append((result["probabilities"]["fraud"], row))
    print(f"sent {len(rows)} payments: {dict(labels)}")
    for score, row in sorted(scored, key=lambda pair: pair[0], reverse=True)[:3]:
        print(f"  fraud {score:.3f}  {row}")


if __name__ == "__main__":
    main()
