"""The paper's stated findings (``bobkit/reference/paper_findings.yaml``) and how a table's answer compares.

Notebooks show the paper's claim next to what the table at hand computes (:func:`claim_text`), and say in one
sentence when the table cannot show a finding (:func:`cannot_show`) rather than print a number that seems to
contradict it. Each comparison is also recorded in ``summary.json`` under ``findings`` (see
:meth:`bobkit.analysis.notebook.Analysis.finding`), which the report's overview reads.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

FINDINGS_FILE = Path(__file__).resolve().parents[1] / "reference" / "paper_findings.yaml"


@functools.lru_cache(maxsize=1)
def load_findings() -> dict[str, Any]:
    """The parsed findings file: ``source`` (citation, url) and ``findings`` (id -> claim, values, where)."""
    with FINDINGS_FILE.open() as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict) or "findings" not in data or "source" not in data:
        raise ValueError(f"{FINDINGS_FILE} lacks 'source' or 'findings'")
    return data


def finding(finding_id: str) -> dict[str, Any]:
    """One finding by id (``KeyError`` names the known ids)."""
    findings = load_findings()["findings"]
    if finding_id not in findings:
        raise KeyError(f"no paper finding {finding_id!r}; known: {sorted(findings)}")
    return findings[finding_id]


def claim_text(finding_id: str) -> str:
    """``**The paper** (Goldblum et al., NeurIPS 2023; where): claim`` as Markdown."""
    item = finding(finding_id)
    source = load_findings()["source"]
    where = item.get("where", "")
    checked = "" if item.get("where_verified", False) else ", location not checked against the PDF"
    return f"**The paper** ({source['short']}; {where}{checked}): {' '.join(str(item['claim']).split())}"


def agreement(value: float, low: float, high: float, paper: float) -> str:
    """``"agrees"`` when the paper's value lies in the interval, ``"disagrees"`` when outside it, ``"unclear"``
    without an interval."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "unclear"
    return "agrees" if low <= paper <= high else "disagrees"


def threshold_agreement(low: float, high: float, threshold: float) -> str:
    """For a claim "above ``threshold``": ``agrees`` when the whole interval is above it, ``disagrees`` when the
    whole interval is below it, else ``unclear``."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "unclear"
    return "agrees" if low > threshold else "disagrees" if high < threshold else "unclear"


def paper_backbones_in(table: pd.DataFrame, finding_id: str) -> dict[str, list[str]]:
    """The backbones the paper names in ``finding_id`` (its ``match`` patterns) and those of ``table`` that match
    each, by ``display_name``, ``backbone`` or ``architecture`` (case-insensitive regular expressions)."""
    patterns = finding(finding_id).get("match") or {}
    names = table.drop_duplicates("backbone")
    text = names["backbone"].astype(str)
    for column in ("display_name", "architecture"):
        if column in names:
            text = text + " | " + names[column].fillna("").astype(str)
    return {name: names.loc[text.map(lambda t, p=pattern: re.search(p, t, re.I) is not None), "backbone"].tolist()
            for name, pattern in patterns.items()}


def family_counts(frame: pd.DataFrame, x: str, *, exclude_kinds: tuple[str, ...] = ("random",)) -> dict[str, int]:
    """Backbones per family with a positive, known ``x`` and more than one distinct value in their family
    (the minimum for a scale correlation), random-init controls excluded."""
    data = frame.copy()
    if "method_kind" in data and exclude_kinds:
        data = data[~data["method_kind"].isin(list(exclude_kinds))]
    data = data[pd.to_numeric(data.get(x), errors="coerce") > 0] if x in data else data.iloc[:0]
    out = {}
    for family, part in data.groupby("family"):
        out[str(family)] = int(len(part)) if part[x].nunique() > 1 else 0
    return out


def cannot_show(finding_id: str, reason: str) -> str:
    """One sentence: this table cannot show the paper's finding, and why."""
    claim = " ".join(str(finding(finding_id)["claim"]).split())
    return f"This table cannot show the paper's finding \"{claim}\": {reason}."


# --------------------------------------------------------------------------------------------------------------------
# This table's answer to one finding: keyword arguments for Analysis.finding (shown, statement, agreement, numbers)
# --------------------------------------------------------------------------------------------------------------------

def top_k_finding(finding_id: str, board: pd.DataFrame | None, table: pd.DataFrame, k: int = 3,
                  min_tasks: int = 2) -> dict[str, Any]:
    """Where the paper's top-``k`` backbones of ``finding_id`` rank on ``board``: ``agrees`` when each one found
    could be in the top ``k`` (rank interval reaches ``k``), ``disagrees`` when one certainly is not. Not shown when
    the table holds fewer than ``min_tasks`` tasks (the paper ranks over all its tasks) or none of them."""
    from bobkit.analysis.prose import md

    present = paper_backbones_in(table, finding_id)
    n_tasks = int(table["task"].nunique())
    reason = None
    if board is None or board.empty:
        reason = "no leaderboard could be computed from it"
    elif n_tasks < min_tasks:
        reason = f"it holds {n_tasks} task ({md(', '.join(sorted(map(str, table['task'].unique()))))}), " \
                 "the paper ranks backbones over all its tasks"
    elif not any(present.values()):
        reason = f"none of the backbones it names ({md(', '.join(present))}) is in this table"
    if reason is not None:
        return {"shown": False, "statement": cannot_show(finding_id, reason)}
    ranked = board.set_index("backbone")
    parts, lows = [], []
    for name, backbones in present.items():
        rows = ranked.loc[[b for b in backbones if b in ranked.index]]
        if rows.empty:
            parts.append(f"{md(name)}: not in this table")
            continue
        best = rows.sort_values("rank").iloc[0]
        interval = (f" (95% interval {best['rank_lo']:.0f}-{best['rank_hi']:.0f})"
                    if np.isfinite(best["rank_lo"]) else "")
        parts.append(f"{md(name)}: rank {int(best['rank'])} of {len(board)}{interval}")
        lows.append(best["rank_lo"] if np.isfinite(best["rank_lo"]) else best["rank"])
    agreement_text = "agrees" if all(low <= k for low in lows) else "disagrees"
    statement = f"Where the paper's top {k} rank in this table: " + "; ".join(parts) + "."
    return {"shown": True, "statement": statement, "agreement": agreement_text, "n": int(len(board))}


def difference_finding(finding_id: str, diff: dict[str, Any] | None, reason: str = "") -> dict[str, Any]:
    """The ViT-minus-CNN correlation difference of a scale finding against the paper's (``values.ViT`` -
    ``values.CNN``): ``agrees`` when the paper's difference lies in the interval. Without ``diff``: not shown,
    ``reason`` says why."""
    from bobkit.analysis.prose import fmt_ci

    values = finding(finding_id).get("values") or {}
    paper_diff = float(values["ViT"]) - float(values["CNN"])
    if diff is None:
        return {"shown": False, "statement": cannot_show(finding_id, reason), "paper_value": paper_diff}
    statement = (f"ViT minus CNN Spearman rho here: {fmt_ci(diff['diff'], diff['ci_low'], diff['ci_high'])} "
                 f"(ViT {diff['rho_a']:.2f}, n = {diff['n_a']}; CNN {diff['rho_b']:.2f}, n = {diff['n_b']}); the "
                 f"paper: {values['ViT']:.2f} - {values['CNN']:.2f} = {paper_diff:.2f}.")
    return {"shown": True, "statement": statement, "value": diff["diff"], "ci_low": diff["ci_low"],
            "ci_high": diff["ci_high"], "n": diff["n_a"] + diff["n_b"], "paper_value": paper_diff,
            "agreement": agreement(diff["diff"], diff["ci_low"], diff["ci_high"], paper_diff)}


def threshold_finding(finding_id: str, value: float, low: float, high: float, n: int, what: str) -> dict[str, Any]:
    """A statistic against the paper's ``values.threshold`` ("above 0.8"): :func:`threshold_agreement`."""
    from bobkit.analysis.prose import fmt_ci

    threshold = float((finding(finding_id).get("values") or {})["threshold"])
    if not (np.isfinite(value) and np.isfinite(low) and np.isfinite(high)):
        return {"shown": False, "paper_value": threshold, "statement": cannot_show(
            finding_id, f"{what} rests on {n} backbones, too few for a rank correlation with an interval")}
    statement = f"{what} here: {fmt_ci(value, low, high)} (n = {n}); the paper: above {threshold:g}."
    return {"shown": True, "statement": statement, "value": value, "ci_low": low, "ci_high": high, "n": n,
            "paper_value": threshold, "agreement": threshold_agreement(low, high, threshold)}


def sign_finding(finding_id: str, summary: dict[str, Any], what: str) -> dict[str, Any]:
    """A difference the paper says is positive (SSL minus supervised at matched data): ``agrees`` when its interval
    is above 0, ``disagrees`` when below."""
    from bobkit.analysis.prose import fmt_ci

    statement = (f"{what} here: {fmt_ci(summary['mean'], summary['ci_low'], summary['ci_high'])} "
                 f"(n = {summary['n']}); the paper: positive (SSL competitive or better).")
    return {"shown": True, "statement": statement, "value": summary["mean"], "ci_low": summary["ci_low"],
            "ci_high": summary["ci_high"], "n": summary["n"], "paper_value": 0.0,
            "agreement": threshold_agreement(summary["ci_low"], summary["ci_high"], 0.0)}
