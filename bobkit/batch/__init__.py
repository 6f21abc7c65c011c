"""Batches: grid files into cells, run keys, papermill execution, backends, claims, status, provenance."""
