"""Stored features from Feast: one feature definition offline and online.

A model version whose manifest has a ``feature_store`` section reads its features from a Feast
repository (the ``featurestore`` extra): callers send entity keys and request-time values, the
data plane fetches the stored features for the whole batch in one online read, applies the
repository's on-demand transformations and hands the model the merged rows
(:mod:`~modelhost.featurestore.online`). Training frames come from the same definitions with
Feast's point-in-time-correct historical retrieval, and served rows are recomputed offline to
catch train-serve skew (:mod:`~modelhost.featurestore.offline`). See docs/feature-store.md.

The names say "feature store" and "feature views" to keep these apart from the LLM product
features of :mod:`modelhost.features`.
"""

from __future__ import annotations

from modelhost.featurestore.repo import apply_repo, materialize, open_store

__all__ = ["apply_repo", "materialize", "open_store"]
