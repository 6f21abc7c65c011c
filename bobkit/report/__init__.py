"""The published report: analysis notebooks executed on a results table and rendered as a site."""
