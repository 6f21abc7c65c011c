"""The paper's stated findings (``bobkit/reference/paper_findings.yaml``) and how a table's answer compares.

The findings file is the project's one record of what the paper states (with its source); :func:`questions` groups
its findings into the questions the report's overview asks. Notebooks show the paper's claim next to what the table
at hand computes (:func:`claim_text`), and say in one sentence when the table cannot show a finding
(:func:`not_shown`) rather than print a number that seems to contradict it. Each comparison is computed here, once,
and recorded in ``summary.json`` under ``findings`` (see :meth:`bobkit.analysis.notebook.Analysis.finding`); the
report's overview only displays what was recorded.
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


#: Every finding states these (see the findings file's header).
REQUIRED_KEYS = ("notebook", "claim", "stated", "measure", "where")


@functools.lru_cache(maxsize=1)
def load_findings() -> dict[str, Any]:
    """The parsed findings file: ``source`` (citation, url), ``note``, ``questions`` (the overview's sections) and
    ``findings`` (id -> notebook, claim, stated, measure, values, where), checked for completeness."""
    with FINDINGS_FILE.open() as fh:
        data = yaml.safe_load(fh)
    return check_findings(data, FINDINGS_FILE)


def check_findings(data: Any, path: Path | str = FINDINGS_FILE) -> dict[str, Any]:
    """``data`` when it is a complete findings document; a ``ValueError`` naming the first gap otherwise."""
    if not isinstance(data, dict) or not all(key in data for key in ("source", "findings", "questions")):
        raise ValueError(f"{path} lacks 'source', 'findings' or 'questions'")
    for finding_id, item in data["findings"].items():
        missing = [key for key in REQUIRED_KEYS if not (isinstance(item, dict) and item.get(key))]
        if missing:
            raise ValueError(f"{path}: finding {finding_id!r} lacks {missing}")
    for question in data["questions"]:
        unknown = [f for f in question.get("findings", []) if f not in data["findings"]]
        if not question.get("id") or not question.get("title") or not question.get("findings") or unknown:
            raise ValueError(f"{path}: question {question.get('id')!r} needs an id, a title and known findings "
                             f"(unknown: {unknown})")
    return data


def questions() -> list[dict[str, Any]]:
    """The questions the report's overview asks, in order: ``id``, ``title``, ``findings`` (ids)."""
    return list(load_findings()["questions"])


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
    text = f"**The paper** ({source['short']}; {' '.join(str(where).split())}{checked}): " \
           f"{' '.join(str(item['claim']).split())}"
    if item.get("quote"):
        text += f" In its words: \"{' '.join(str(item['quote']).split())}\"."
    if item.get("assumed"):
        text += f" *Assumed here, not stated by the paper:* {' '.join(str(item['assumed']).split())}"
    return text


def agreement(value: float, low: float, high: float, paper: float, reference: float = 0.0) -> str:
    """Which side of ``reference`` (0: no difference) the interval is on, against the paper's side, as the overview's
    legend reads it: ``"agrees"`` when the whole interval is on the paper's side, ``"disagrees"`` when it is all on
    the other, ``"unclear"`` when it holds both (or there is no interval). A paper value equal to ``reference``
    ("no difference") agrees when the interval holds it and disagrees otherwise."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "unclear"
    if paper == reference:
        return "agrees" if low <= paper <= high else "disagrees"
    if paper < reference:
        low, high = 2 * reference - high, 2 * reference - low  # mirrored: the paper's side is above reference
    return threshold_agreement(low, high, reference)


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


def not_shown(finding_id: str, reason: str, **numbers: Any) -> dict[str, Any]:
    """Keyword arguments for :meth:`~bobkit.analysis.notebook.Analysis.finding` when this table cannot show the
    finding: the sentence of :func:`cannot_show` and the bare ``reason`` (Markdown, table values escaped), which the
    report's overview shows; ``numbers`` (``paper_value``) are kept."""
    return {"shown": False, "statement": cannot_show(finding_id, reason), "reason": reason, **numbers}


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
        return not_shown(finding_id, reason)
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
        return not_shown(finding_id, reason, paper_value=paper_diff)
    statement = (f"ViT minus CNN Spearman rho here: {fmt_ci(diff['diff'], diff['ci_low'], diff['ci_high'])} "
                 f"(ViT {diff['rho_a']:.2f}, n = {diff['n_a']}; CNN {diff['rho_b']:.2f}, n = {diff['n_b']}); the "
                 f"paper: {values['ViT']:.2f} - {values['CNN']:.2f} = {paper_diff:.2f}.")
    verdict = agreement(diff["diff"], diff["ci_low"], diff["ci_high"], paper_diff)
    if verdict == "agrees" and not diff["ci_low"] <= paper_diff <= diff["ci_high"]:
        statement += f" Same direction as the paper; its {paper_diff:.2f} lies outside this interval."
    return {"shown": True, "statement": statement, "value": diff["diff"], "ci_low": diff["ci_low"],
            "ci_high": diff["ci_high"], "n": diff["n_a"] + diff["n_b"], "paper_value": paper_diff,
            "agreement": verdict}


def threshold_finding(finding_id: str, value: float, low: float, high: float, n: int, what: str) -> dict[str, Any]:
    """A statistic against the paper's ``values.threshold`` ("above 0.8"): :func:`threshold_agreement`."""
    from bobkit.analysis.prose import fmt_ci

    threshold = float((finding(finding_id).get("values") or {})["threshold"])
    if not (np.isfinite(value) and np.isfinite(low) and np.isfinite(high)):
        return not_shown(finding_id, f"{what} rests on {n} backbones, too few for a rank correlation with an interval",
                         paper_value=threshold)
    statement = f"{what} here: {fmt_ci(value, low, high)} (n = {n}); the paper: above {threshold:g}."
    return {"shown": True, "statement": statement, "value": value, "ci_low": low, "ci_high": high, "n": n,
            "paper_value": threshold, "agreement": threshold_agreement(low, high, threshold)}


def sign_finding(finding_id: str, summary: dict[str, Any], what: str, *, expected: str = "positive",
                 paper: str = "positive (SSL competitive or better)") -> dict[str, Any]:
    """A statistic the paper says is ``expected`` (``"positive"``: SSL minus supervised at matched data; or
    ``"negative"``: ECE against accuracy), from a summary with ``mean`` (or ``rho``), ``ci_low``, ``ci_high``, ``n``:
    ``agrees`` when its interval is on that side of 0, ``disagrees`` when on the other, ``unclear`` otherwise.
    ``paper`` words the paper's side for the statement."""
    from bobkit.analysis.prose import fmt_ci

    if expected not in {"positive", "negative"}:
        raise ValueError(f"expected={expected!r}: use 'positive' or 'negative'")
    value = summary["mean"] if "mean" in summary else summary["rho"]
    low, high = summary["ci_low"], summary["ci_high"]
    if not (np.isfinite(value) and np.isfinite(low) and np.isfinite(high)):
        return not_shown(finding_id, f"{what} rests on n = {summary['n']}, too few for an interval", paper_value=0.0)
    statement = f"{what} here: {fmt_ci(value, low, high)} (n = {summary['n']}); the paper: {paper}."
    verdict = threshold_agreement(low, high, 0.0) if expected == "positive" else \
        threshold_agreement(-high, -low, 0.0)
    return {"shown": True, "statement": statement, "value": value, "ci_low": low, "ci_high": high,
            "n": summary["n"], "paper_value": 0.0, "agreement": verdict}


def family_or_control(frame: pd.DataFrame) -> pd.Series:
    """Each row's ``family``, with random-init controls set apart (``"CNN, random init"``): the by-family gains a
    notebook shows then read as the finding computes them, over pretrained backbones only."""
    family = frame["family"].fillna("unknown").astype(str)
    if "method_kind" not in frame:
        return family
    return family.where(frame["method_kind"] != "random", family + ", random init")


def family_gain_finding(finding_id: str, comparison: pd.DataFrame, *, a: str, b: str, vit_families: list[str],
                        n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Do ViTs gain more than CNNs from protocol ``b`` over ``a``? The ViT (``vit_families``) mean ``delta`` minus
    the CNN one over the pretrained backbones' x dataset pairs of a
    :func:`~bobkit.analysis.comparisons.protocol_comparison` (random-init controls left out: an untrained ViT says
    nothing about pretrained transformers), with a bootstrap interval resampling backbones within each family:
    :func:`sign_finding` (positive)."""
    from bobkit.analysis.comparisons import group_difference
    from bobkit.analysis.errors import InsufficientDataError
    from bobkit.analysis.prose import md

    pretrained = comparison[comparison["method_kind"] != "random"] if "method_kind" in comparison else comparison
    grouped = pretrained.assign(_family=pretrained["family"].map(lambda f: "ViT" if f in vit_families else f))
    present = set(grouped.dropna(subset=["delta"])["_family"])
    absent = [family for family in ("ViT", "CNN") if family not in present]
    if absent:
        return not_shown(finding_id, f"it has no pretrained {' or '.join(absent)} backbone run under both "
                                     f"{md(a)} and {md(b)}", paper_value=0.0)
    try:
        diff = group_difference(grouped, "delta", "_family", a="CNN", b="ViT", n_boot=n_boot, seed=seed,
                                cluster="backbone")
    except InsufficientDataError as exc:
        return not_shown(finding_id, md(exc), paper_value=0.0)
    summary = {"mean": diff["diff"], "ci_low": diff["ci_low"], "ci_high": diff["ci_high"],
               "n": diff["n_a"] + diff["n_b"]}
    return sign_finding(finding_id, summary, f"ViT minus CNN gain from {md(b)} over {md(a)}",
                        paper="positive (transformers gain more from fine-tuning)")
