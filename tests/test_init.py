from __future__ import annotations

import modelhost


def test_public_api_is_explicit_and_sorted() -> None:
    assert modelhost.__all__ == sorted(modelhost.__all__)
    for name in modelhost.__all__:
        assert hasattr(modelhost, name), name
