"""The published report: analysis notebooks executed on a results table and built into a book (Jupyter Book)."""
