"""Wire models of each protocol (used for documentation and, off the hot path, parsing)."""
