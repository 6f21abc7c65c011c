"""The small wide table ``bob build`` prints: backbones as rows, settings as columns (labelled by
:func:`bobkit.analysis.settings.setting_ids`), the mean over seeds in each cell."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bobkit.analysis.settings import setting_ids

if TYPE_CHECKING:
    import pandas as pd


def leaderboard(table: pd.DataFrame, metric: str | None = "top1") -> pd.DataFrame:
    """A small wide table: backbones as rows, settings as columns, mean over seeds (never over settings).

    One column per ``setting_id``, labelled ``setting | metric`` plus the parameters that tell two settings with the
    same label apart. ``metric=None`` keeps every metric of ``table`` (e.g. rows already filtered to each task's
    primary metrics).
    """
    import pandas as pd

    rows = table if metric is None else table[table["metric"] == metric]
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(column=setting_ids(rows))
    wide = rows.pivot_table(index="backbone", columns="column", values="value", aggfunc="mean")
    wide.columns.name = None
    wide["mean"] = wide.mean(axis=1)
    return wide.sort_values("mean", ascending=False)
