"""Feature definitions of the fraud example: what the model knows about a card payment.

Two batch feature views, computed once a day by ``generate.py`` from the transaction events
(in production: a daily job over the data warehouse), and one on-demand view that combines
them with the amount of the payment being scored, which only exists at request time.

The same definitions serve both sides: ``get_historical_features`` joins them point in time
onto past transactions for training, and ``get_online_features`` reads the latest materialised
values for serving. Having one definition is what makes the two comparable, and what the skew
check relies on.
"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    RequestSource,
    ValueType,
)
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64

#: The daily job publishes one row per key and midnight. Two days of ttl tolerate one missed
#: run; an older value is no value (modelhost's ``max_age_s`` says the same for serving).
DAILY_TTL = timedelta(days=2)

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.INT64,
    description="A card holder.",
)
merchant = Entity(
    name="merchant",
    join_keys=["merchant_id"],
    value_type=ValueType.INT64,
    description="A shop that accepts the card.",
)

# Relative paths resolve against this directory, so the repository can live anywhere.
customer_stats_source = FileSource(
    name="customer_stats_source",
    path="data/customer_stats.parquet",
    timestamp_field="event_timestamp",
)
merchant_stats_source = FileSource(
    name="merchant_stats_source",
    path="data/merchant_stats.parquet",
    timestamp_field="event_timestamp",
)

customer_stats = FeatureView(
    name="customer_stats",
    entities=[customer],
    ttl=DAILY_TTL,
    schema=[
        Field(name="customer_id", dtype=Int64),
        Field(name="txn_count_7d", dtype=Int64, description="Payments in the 7 days before."),
        Field(name="avg_amount_7d", dtype=Float64, description="Their mean amount, 0 if none."),
        Field(name="max_amount_7d", dtype=Float64, description="Their largest amount, 0 if none."),
        Field(name="avg_amount_30d", dtype=Float64, description="Mean amount over 30 days."),
    ],
    source=customer_stats_source,
    online=True,
    description="How a customer usually spends, as of the last midnight.",
)

merchant_stats = FeatureView(
    name="merchant_stats",
    entities=[merchant],
    ttl=DAILY_TTL,
    schema=[
        Field(name="merchant_id", dtype=Int64),
        Field(name="merchant_txn_count_30d", dtype=Int64, description="Payments in 30 days."),
        Field(name="merchant_fraud_rate_30d", dtype=Float64, description="Share of them fraud."),
    ],
    source=merchant_stats_source,
    online=True,
    description="How risky a merchant has been, as of the last midnight.",
)

#: Values that only exist when a payment is being scored: the caller sends them.
transaction = RequestSource(
    name="transaction",
    schema=[Field(name="amount", dtype=Float64)],
)


@on_demand_feature_view(
    sources=[customer_stats, transaction],
    schema=[
        Field(name="amount_to_avg_ratio", dtype=Float64),
        Field(name="amount_to_max_ratio", dtype=Float64),
    ],
    description="How far this payment is above what the customer usually spends.",
)
def amount_features(inputs: pd.DataFrame) -> pd.DataFrame:
    """The payment's amount relative to the customer's recent average and largest payment.

    A ratio is the strongest single fraud signal here, and one a batch job cannot precompute:
    it needs the amount of the payment being scored. Feast runs this same function on the
    point-in-time joined training rows and on every online request, so the two cannot drift.

    A customer without recent payments (or unknown to the store, whose values arrive missing)
    is compared with a $1 habit: no division by zero, and a large first payment still stands
    out. This has to happen here because Feast computes this view before modelhost fills in
    the manifest's defaults.
    """
    amount = inputs["amount"].astype(float)
    usual = inputs["avg_amount_7d"].astype(float).fillna(0.0).clip(lower=1.0)
    largest = inputs["max_amount_7d"].astype(float).fillna(0.0).clip(lower=1.0)
    return pd.DataFrame(
        {"amount_to_avg_ratio": amount / usual, "amount_to_max_ratio": amount / largest}
    )


#: Everything the fraud model reads, versioned by name: a model that needs other features gets
#: a new service (``fraud_detection_v2``), and the deployed one keeps working.
fraud_detection_v1 = FeatureService(
    name="fraud_detection_v1",
    features=[customer_stats, merchant_stats, amount_features],
    description="Features of the fraud model, version 1.",
)
