"""Frozen features: device execution settings and extraction with an on-disk cache."""
