"""LLM product features: versioned specs run by a general model with no feature-specific code."""
