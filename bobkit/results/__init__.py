"""Results: the per-run metrics sidecars and the tidy results table built from them."""
