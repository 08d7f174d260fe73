"""``python -m modelhost.cli``: the ``modelhost`` command (the tests and benchmarks run it so)."""

from __future__ import annotations

from modelhost.cli import main

if __name__ == "__main__":
    main()
