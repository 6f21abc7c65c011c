"""The paper's findings beside this table's answers, as the analysis notebooks recorded them: the overview's rows.

The paper's side comes from the project's one findings file (``bobkit/reference/paper_findings.yaml``, read by
:mod:`bobkit.analysis.findings`); this table's side is what each analysis notebook recorded under ``findings`` in its
``summary.json`` (:meth:`bobkit.analysis.notebook.Analysis.finding`): value, interval, n and agreement. Nothing is
computed here, so a finding is answered once, in its notebook, and the overview and the chapter cannot disagree.
A finding without a recorded answer is "not measurable here", with the notebook's reason (or why the notebook gave
none: it failed, or was not run in this report).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from bobkit.analysis import findings as paper
from bobkit.analysis.prose import plain_text
from bobkit.analysis.tables import format_interval, format_number

AGREES, DISAGREES, UNCLEAR, NOT_MEASURABLE = "agrees", "disagrees", "unclear", "not measurable here"
MARKS = {AGREES: "✓", DISAGREES: "✗", UNCLEAR: "?", NOT_MEASURABLE: "–"}


@dataclass
class Answer:
    """One row of the overview: a finding of the paper beside this table's answer (all plain text)."""

    question: str
    finding: str
    chapter: str  # the notebook that answers it
    claim: str
    stated: str
    measure: str
    answer: str
    n: str
    verdict: str
    reason: str = ""
    assumed: str = ""  # what the project reads into the finding that the paper does not state

    @property
    def marked_verdict(self) -> str:
        """The verdict with its symbol and, when there is one, its reason (``– not measurable here: ...``)."""
        text = f"{MARKS.get(self.verdict, '')} {self.verdict}".strip()
        return f"{text}: {self.reason}" if self.reason else text


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_findings(figures_root: Path, notebook: str, failed: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """``(findings, why_none)``: what ``notebook`` recorded under ``figures_root/<notebook>/summary.json``, or an
    empty dict and the reason there is nothing (``failed``: notebook -> error)."""
    if notebook in failed:
        return {}, f"the notebook {notebook} failed ({failed[notebook] or 'see its chapter'})"
    try:
        summary = json.loads((figures_root / notebook / "summary.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}, f"the notebook {notebook} was not run for this report"
    recorded = summary.get("findings") if isinstance(summary, dict) else None
    return (recorded if isinstance(recorded, dict) else {}), f"the notebook {notebook} recorded no answer"


def answer_row(question: str, finding_id: str, recorded: Mapping[str, Any] | None, why_none: str) -> Answer:
    """The overview row for one finding from its recorded entry (``None``: not recorded, ``why_none`` says why)."""
    item = paper.finding(finding_id)
    row = Answer(question=question, finding=finding_id, chapter=str(item["notebook"]),
                 claim=" ".join(str(item["claim"]).split()), stated=" ".join(str(item["stated"]).split()),
                 measure=" ".join(str(item["measure"]).split()), answer="", n="", verdict=NOT_MEASURABLE,
                 assumed=" ".join(str(item.get("assumed") or "").split()))
    if not recorded:
        row.reason = why_none
        return row
    if not recorded.get("shown"):
        row.reason = plain_text(str(recorded.get("reason") or recorded.get("statement") or why_none))
        return row
    value, n = _number(recorded.get("value")), _number(recorded.get("n"))
    if math.isfinite(value):
        row.answer = format_interval(value, _number(recorded.get("ci_low")), _number(recorded.get("ci_high")))
    else:  # an answer in words (where the paper's top backbones rank)
        row.answer = plain_text(str(recorded.get("statement", "")))
    row.n = format_number(n, integral=True) if math.isfinite(n) else ""
    row.verdict = str(recorded.get("agreement") or UNCLEAR)
    if row.verdict not in MARKS:
        raise ValueError(f"finding {finding_id!r}: recorded agreement {row.verdict!r} is not one of {sorted(MARKS)}")
    if recorded.get("agreement") is None:
        row.reason = "the paper states nothing to compare with"
    return row


def collect(figures_root: Path, failed: Mapping[str, str] | None = None) -> list[Answer]:
    """One :class:`Answer` per finding of every question of the findings file, in the file's order, read from the
    notebooks' outputs under ``figures_root``."""
    failed = failed or {}
    rows, read = [], {}
    for question in paper.questions():
        for finding_id in question["findings"]:
            notebook = str(paper.finding(finding_id)["notebook"])
            if notebook not in read:
                read[notebook] = read_findings(figures_root, notebook, failed)
            recorded, why_none = read[notebook]
            rows.append(answer_row(str(question["id"]), finding_id, recorded.get(finding_id), why_none))
    return rows
