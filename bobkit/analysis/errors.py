"""The one error the analysis raises when a table cannot answer a question."""

from __future__ import annotations


class InsufficientDataError(ValueError):
    """The table lacks what an analysis needs (too few backbones, tasks, pairs, ...). Notebooks show it as a note."""
