"""Progress bars: one helper, tqdm underneath (plain text in a terminal, a widget-free bar in notebooks)."""

from __future__ import annotations

from typing import Any


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True) -> Any:
    """A tqdm bar over ``total`` items, or ``None`` when disabled or there is nothing to count.

    Plain ``tqdm`` (not ``tqdm.auto``): inside a kernel the auto variant needs ipywidgets and prints an
    ``IProgress`` warning into the executed notebook instead of a bar.
    """
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
