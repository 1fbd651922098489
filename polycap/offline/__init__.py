"""Offline stand-ins: tiny models and synthetic data (a leaf: imports nothing above it)."""
