"""Accounting: usage and cost per principal, and the feedback (ground truth) callers send."""
