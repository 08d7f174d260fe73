"""Generate the card transactions of the fraud example and the feature tables built from them.

The events are synthetic but shaped like the real thing, so that the features have something
to find:

* every customer has a spending level and an activity rate of their own, and mostly shops at
  a handful of favourite merchants, in the daytime;
* an account takeover hits a few customers: a short night-time burst at merchants the customer
  never used (often the same few "risky" shops), starting with a tiny card-testing charge and
  then amounts far above what the customer usually spends;
* a few frauds are scattered among ordinary traffic, with ordinary-looking amounts: these are
  the ones no feature will catch.

From the events, the script computes what a daily batch job would publish for Feast: at the
end of each day, each customer's 7- and 30-day spending statistics and each merchant's 30-day
volume and fraud rate. A row stamped at midnight ``D`` only sees transactions before ``D``, so
a point-in-time join can never leak a transaction into its own features.

Run ``python examples/fraud/generate.py`` (or ``--small`` for a few seconds' worth of data).
Everything is drawn from one seeded generator: the same seed and end date give the same files.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "work"
DEFAULT_REPO = HERE / "feature_repo"

FIRST_CUSTOMER_ID = 1000
FIRST_MERCHANT_ID = 1
#: Hour-of-day weights of ordinary shopping: quiet at night, busy at lunch and in the evening.
DAY_HOURS = np.array(
    [1, 0.5, 0.3, 0.2, 0.2, 0.4, 1, 2, 3, 4, 5, 6, 7, 6, 5, 5, 6, 7, 8, 8, 7, 5, 3, 2], dtype=float
)
#: Hour-of-day weights of fraud bursts: mostly while the card holder sleeps.
NIGHT_HOURS = np.array(
    [6, 7, 8, 8, 7, 5, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4, 5], dtype=float
)


@dataclass(frozen=True)
class Size:
    """How much data to make."""

    customers: int
    merchants: int
    days: int


SIZES = {
    "full": Size(customers=2_000, merchants=500, days=60),
    "small": Size(customers=200, merchants=80, days=30),
}


@dataclass(frozen=True)
class Customers:
    """The hidden traits each customer's transactions are drawn from."""

    ids: np.ndarray
    typical_amount: np.ndarray  # median purchase, in dollars
    spread: np.ndarray  # log-scale spread of their purchases
    daily_rate: np.ndarray  # expected purchases per day
    favourites: list[np.ndarray]  # the merchants they usually shop at


def make_customers(rng: np.random.Generator, size: Size) -> Customers:
    """Draw customers: spending levels vary by an order of magnitude, activity by more."""
    n = size.customers
    merchants = np.arange(FIRST_MERCHANT_ID, FIRST_MERCHANT_ID + size.merchants)
    favourites = [
        rng.choice(merchants, size=int(rng.integers(3, 9)), replace=False) for _ in range(n)
    ]
    return Customers(
        ids=np.arange(FIRST_CUSTOMER_ID, FIRST_CUSTOMER_ID + n),
        typical_amount=rng.lognormal(mean=np.log(35.0), sigma=0.6, size=n),
        spread=rng.uniform(0.3, 0.7, size=n),
        daily_rate=rng.gamma(shape=2.0, scale=0.35, size=n),
        favourites=favourites,
    )


def _times(rng: np.random.Generator, days: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """Seconds since the start for events on the given days, hours drawn from the weights."""
    hour = rng.choice(24, size=len(days), p=hours / hours.sum())
    return days * 86_400 + hour * 3_600 + rng.integers(0, 3_600, size=len(days))


def legit_transactions(rng: np.random.Generator, people: Customers, size: Size) -> pd.DataFrame:
    """Ordinary purchases: each customer's own rate, amounts around their own level."""
    counts = rng.poisson(people.daily_rate * size.days)
    who = np.repeat(np.arange(len(people.ids)), counts)
    day = rng.integers(0, size.days, size=len(who))
    amount = rng.lognormal(np.log(people.typical_amount[who]), people.spread[who])
    # 85 % of purchases at a favourite merchant, the rest anywhere.
    anywhere = rng.integers(FIRST_MERCHANT_ID, FIRST_MERCHANT_ID + size.merchants, len(who))
    favourite = np.array([rng.choice(people.favourites[i]) for i in who], dtype=np.int64)
    merchant = np.where(rng.random(len(who)) < 0.85, favourite, anywhere)
    return pd.DataFrame(
        {
            "customer_id": people.ids[who],
            "merchant_id": merchant,
            "amount": amount,
            "seconds": _times(rng, day, DAY_HOURS),
            "is_fraud": 0,
        }
    )


def takeover_bursts(
    rng: np.random.Generator, people: Customers, size: Size, risky: np.ndarray
) -> pd.DataFrame:
    """Account takeovers: a card-testing charge, then a few large purchases within hours."""
    victims = rng.choice(len(people.ids), size=max(1, len(people.ids) // 25), replace=False)
    frames = []
    for victim in victims:
        n = 2 + int(rng.poisson(3))
        # Most takeovers happen once the account has some history to hide in.
        start = _times(rng, np.array([rng.integers(size.days // 8, size.days)]), NIGHT_HOURS)[0]
        seconds = start + np.sort(rng.integers(0, 3 * 3_600, size=n))
        amount = people.typical_amount[victim] * rng.lognormal(np.log(6.0), 0.5, size=n)
        amount[0] = rng.uniform(0.5, 3.0)  # the card-testing charge
        merchant = np.where(
            rng.random(n) < 0.8,
            rng.choice(risky, size=n),
            rng.integers(FIRST_MERCHANT_ID, FIRST_MERCHANT_ID + size.merchants, n),
        )
        frames.append(
            pd.DataFrame(
                {
                    "customer_id": people.ids[victim],
                    "merchant_id": merchant,
                    "amount": amount,
                    "seconds": np.minimum(seconds, size.days * 86_400 - 1),
                    "is_fraud": 1,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def scattered_fraud(
    rng: np.random.Generator, people: Customers, size: Size, n: int
) -> pd.DataFrame:
    """Single stolen-card purchases at ordinary amounts: the hard cases."""
    who = rng.integers(0, len(people.ids), size=n)
    return pd.DataFrame(
        {
            "customer_id": people.ids[who],
            "merchant_id": rng.integers(FIRST_MERCHANT_ID, FIRST_MERCHANT_ID + size.merchants, n),
            "amount": rng.lognormal(np.log(80.0), 0.8, size=n),
            "seconds": _times(rng, rng.integers(0, size.days, size=n), DAY_HOURS),
            "is_fraud": 1,
        }
    )


def make_transactions(seed: int, size: Size, end: datetime) -> pd.DataFrame:
    """The event table: one row per card transaction, sorted by time, the last before ``end``."""
    rng = np.random.default_rng(seed)
    people = make_customers(rng, size)
    risky = rng.choice(
        np.arange(FIRST_MERCHANT_ID, FIRST_MERCHANT_ID + size.merchants),
        size=max(2, size.merchants // 20),
        replace=False,
    )
    legit = legit_transactions(rng, people, size)
    events = pd.concat(
        [
            legit,
            takeover_bursts(rng, people, size, risky),
            scattered_fraud(rng, people, size, n=max(1, len(legit) // 500)),
        ],
        ignore_index=True,
    )
    start = pd.Timestamp(end) - pd.Timedelta(days=size.days)
    events["event_timestamp"] = start + pd.to_timedelta(events.pop("seconds"), unit="s")
    events["amount"] = events["amount"].round(2).clip(lower=0.5)
    events = events.sort_values(["event_timestamp", "customer_id"], kind="stable")
    events.insert(0, "transaction_id", np.arange(1, len(events) + 1))
    columns = [
        "transaction_id",
        "customer_id",
        "merchant_id",
        "amount",
        "event_timestamp",
        "is_fraud",
    ]
    return events[columns].reset_index(drop=True)


def _daily_grid(
    events: pd.DataFrame, key: str, value: str, how: str, days: pd.DatetimeIndex
) -> pd.DataFrame:
    """One column per ``key``, one row per day: the ``how`` of ``value`` on that day (0 if none)."""
    daily = events.groupby([events["event_timestamp"].dt.floor("D"), key])[value].agg(how)
    return daily.unstack(key, fill_value=0).reindex(days, fill_value=0).astype(float)


def _trailing(grid: pd.DataFrame, days: int, how: str) -> pd.DataFrame:
    """Stamp each day's midnight with the ``how`` of the ``days`` days before it.

    The shift by one day is the point-in-time guarantee: the row stamped at midnight D summarises
    the days D-``days`` .. D-1 and nothing of day D itself.
    """
    rolled = getattr(grid.rolling(days, min_periods=1), how)()
    rolled.index = rolled.index + pd.Timedelta(days=1)
    return rolled


def _stack(columns: dict[str, pd.DataFrame], key: str) -> pd.DataFrame:
    """Long format for Feast: one row per (key, midnight)."""
    long = pd.DataFrame({name: grid.stack() for name, grid in columns.items()})
    long.index.names = ["event_timestamp", key]
    return long.reset_index()[[key, "event_timestamp", *columns]]


def customer_stats(events: pd.DataFrame, days: pd.DatetimeIndex) -> pd.DataFrame:
    """Each customer's spending over the 7 and 30 days before each midnight.

    An average over no transactions is 0, the same value the model manifest uses as the default
    for a customer the online store does not know, so "no recent spending" means one thing.
    """
    count = _daily_grid(events, "customer_id", "amount", "count", days)
    total = _daily_grid(events, "customer_id", "amount", "sum", days)
    largest = _daily_grid(events, "customer_id", "amount", "max", days)
    count_7d, total_7d = _trailing(count, 7, "sum"), _trailing(total, 7, "sum")
    count_30d, total_30d = _trailing(count, 30, "sum"), _trailing(total, 30, "sum")
    table = _stack(
        {
            "txn_count_7d": count_7d,
            "avg_amount_7d": (total_7d / count_7d.where(count_7d > 0)).fillna(0.0).round(2),
            "max_amount_7d": _trailing(largest, 7, "max"),
            "avg_amount_30d": (total_30d / count_30d.where(count_30d > 0)).fillna(0.0).round(2),
        },
        key="customer_id",
    )
    return table.astype({"txn_count_7d": "int64"})


def merchant_stats(events: pd.DataFrame, days: pd.DatetimeIndex) -> pd.DataFrame:
    """Each merchant's volume and fraud rate over the 30 days before each midnight.

    The fraud rate uses the labels as if chargebacks arrived the same day; in production they
    arrive weeks later, and the window would end that much earlier.
    """
    count = _trailing(_daily_grid(events, "merchant_id", "is_fraud", "count", days), 30, "sum")
    frauds = _trailing(_daily_grid(events, "merchant_id", "is_fraud", "sum", days), 30, "sum")
    table = _stack(
        {
            "merchant_txn_count_30d": count,
            "merchant_fraud_rate_30d": (frauds / count.where(count > 0)).fillna(0.0).round(4),
        },
        key="merchant_id",
    )
    return table.astype({"merchant_txn_count_30d": "int64"})


def write_all(seed: int, size: Size, end: datetime, out: Path, repo: Path) -> dict[str, int]:
    """Write the events, the entity file for training and the feature tables; return row counts."""
    events = make_transactions(seed, size, end)
    # The days the daily job summarises. It starts the day before the first event, so that its
    # first row (all zeros, stamped at the first midnight) covers the first day's transactions:
    # without it, Feast's file offline store drops those entity rows from the training set.
    start = pd.Timestamp(end) - pd.Timedelta(days=size.days)
    days = pd.date_range(start - pd.Timedelta(days=1), pd.Timestamp(end) - pd.Timedelta(days=1))
    customers = customer_stats(events, days)
    merchants = merchant_stats(events, days)
    # What training asks Feast about: who paid whom how much, when, and the label.
    labels = events[
        ["transaction_id", "customer_id", "merchant_id", "event_timestamp", "amount", "is_fraud"]
    ]
    data = repo / "data"
    out.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    events.to_parquet(out / "transactions.parquet", index=False)
    labels.to_parquet(out / "labels.parquet", index=False)
    customers.to_parquet(data / "customer_stats.parquet", index=False)
    merchants.to_parquet(data / "merchant_stats.parquet", index=False)
    return {
        "transactions": len(events),
        "frauds": int(events["is_fraud"].sum()),
        "customer_stats": len(customers),
        "merchant_stats": len(merchants),
    }


def _midnight(text: str | None) -> datetime:
    """The given date, or today, as a UTC midnight."""
    if text is None:
        now = datetime.now(UTC)
        return datetime(now.year, now.month, now.day, tzinfo=UTC)
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def shown(path: Path) -> Path:
    """``path`` relative to the working directory when it is under it (for messages)."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, generate, print what was written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="events and labels")
    parser.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="Feast repo (data/)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--small", action="store_true", help="200 customers over 30 days")
    parser.add_argument(
        "--end",
        help="date (YYYY-MM-DD) the data ends at, default today: the latest feature rows must be "
        "fresh when the model is served, or every request gets the defaults",
    )
    args = parser.parse_args(argv)
    end = _midnight(args.end)
    counts = write_all(
        args.seed, SIZES["small" if args.small else "full"], end, args.out, args.repo
    )
    rate = counts["frauds"] / counts["transactions"]
    print(
        f"{counts['transactions']:,} transactions, {counts['frauds']:,} frauds ({rate:.2%}), "
        f"ending {end:%Y-%m-%d %H:%M} UTC -> {shown(args.out)}"
    )
    print(
        f"{counts['customer_stats']:,} customer_stats rows, "
        f"{counts['merchant_stats']:,} merchant_stats rows -> {shown(args.repo / 'data')}"
    )


if __name__ == "__main__":
    main()
