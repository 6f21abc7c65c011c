"""The paper's claims beside this table's answers: what the overview page shows for each question.

The claims are data (``paper_claims.yaml`` here, or ``bobkit/reference/paper_findings.yaml`` when it exists in the
same format): each names the paper's statement and stated value, where an analysis notebook records the measured
answer (a ``summary.json`` key or a CSV table in its figures folder) and how to compare the two. :func:`evaluate`
returns one :class:`ClaimResult` per claim with the measured value, its interval and n, and a verdict:

``agrees`` / ``disagrees`` when the interval (or, without one, the estimate) is on one side; ``inconclusive`` when
the interval straddles the paper's value; ``partly agrees`` for a top-k list that holds some of the paper's
backbones; ``not measurable here`` when the table cannot answer (the notebook failed or skipped the section, a
family is missing, too few backbones), with the reason.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import yaml

from bobkit.report.tables import format_interval, format_number

CLAIMS_FILE = Path(__file__).with_name("paper_claims.yaml")
AGREES, PARTLY, DISAGREES, INCONCLUSIVE, NOT_MEASURABLE = (
    "agrees", "partly agrees", "disagrees", "inconclusive", "not measurable here")
MARKS = {AGREES: "✓", PARTLY: "◐", DISAGREES: "✗", INCONCLUSIVE: "?", NOT_MEASURABLE: "–"}


def _reference_findings() -> Path:
    from bobkit.utils.paths import repo_root

    return repo_root() / "bobkit" / "reference" / "paper_findings.yaml"


def load_claims(path: Path | None = None) -> dict[str, Any]:
    """The claims document: ``path``, else the project's paper-findings file when it has ``questions`` with
    ``claims`` in this module's format, else the report's own ``paper_claims.yaml``."""
    candidates = [path] if path is not None else [_reference_findings(), CLAIMS_FILE]
    for candidate in candidates:
        if candidate is None or not candidate.is_file():
            continue
        document = yaml.safe_load(candidate.read_text(encoding="utf-8")) or {}
        questions = document.get("questions") if isinstance(document, dict) else None
        if isinstance(questions, list) and all(isinstance(q, dict) and "claims" in q for q in questions):
            document.setdefault("path", str(candidate))
            return document
        if path is not None:
            raise ValueError(f"{candidate}: not a claims file (needs a list of questions with claims)")
    raise FileNotFoundError(f"no claims file: {CLAIMS_FILE}")


# --------------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class Measured:
    """A value an analysis notebook recorded, or why there is none."""

    value: float = math.nan
    low: float = math.nan
    high: float = math.nan
    n: float = math.nan
    names: list[str] = field(default_factory=list)  # top rows, for top_includes
    all_names: list[str] = field(default_factory=list)
    interval: str = "interval"  # or "range": not a confidence interval
    missing: str = ""

    @property
    def has_interval(self) -> bool:
        """True when both bounds are finite."""
        return math.isfinite(self.low) and math.isfinite(self.high)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def _select(data: Any, where: Mapping[str, Any] | None) -> Any:
    if isinstance(data, list):
        matches = [row for row in data if isinstance(row, dict) and all(row.get(k) == v for k, v in
                                                                           (where or {}).items())]
        return matches[0] if matches else None
    return data


def _lookup(summary: Mapping[str, Any], key: str) -> Any:
    value: Any = summary
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _why_missing(summary: Mapping[str, Any], what: str, section: str | None) -> str:
    """The notebook's own reason when it skipped the section (``section``: the start of its guard title)."""
    skipped = summary.get("skipped") or {}
    reasons = [reason for title, reason in skipped.items() if section and str(title).startswith(section)]
    if reasons:
        return f"skipped by the notebook: {reasons[0]}"
    return f"{what}: not recorded for this table"


def measure(spec: Mapping[str, Any], figures_root: Path, failed: Mapping[str, str]) -> Measured:
    """The value ``spec`` points at, under ``figures_root/<notebook>/`` (``failed``: notebook -> error)."""
    notebook = str(spec.get("notebook", ""))
    what = str(spec.get("where", {}).get("group") or spec.get("where", {}).get("family") or spec.get("key")
               or spec.get("table"))
    if notebook in failed:
        return Measured(missing=f"the notebook {notebook} failed")
    folder = figures_root / notebook
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return Measured(missing=f"the notebook {notebook} was not run")
    if "table" in spec:
        path = folder / str(spec["table"])
        if not path.is_file():
            return Measured(missing=_why_missing(summary, what, spec.get("section")))
        frame = pd.read_csv(path)
        if "names" in spec:
            names = frame[spec["names"]].astype(str).tolist() if spec["names"] in frame else []
            return Measured(names=names[: int(spec.get("top", 3))], all_names=names, n=len(names))
        for column, wanted in (spec.get("where") or {}).items():
            frame = frame[frame[column] == wanted] if column in frame else frame.iloc[0:0]
        if not len(frame):
            return Measured(missing=f"no {what} rows in this table's results")
        row: Any = frame.iloc[0].to_dict()
    else:
        recorded = _lookup(summary, str(spec.get("key", "")))
        if recorded is None:
            return Measured(missing=_why_missing(summary, what, spec.get("section")))
        row = _select(recorded, spec.get("where"))
        if not isinstance(row, Mapping):
            return Measured(missing=f"no {what} rows in this table's results")
    measured = Measured(value=_number(row.get(spec.get("value", "value"))), low=_number(row.get(spec.get("low"))),
                        high=_number(row.get(spec.get("high"))), n=_number(row.get(spec.get("n"))),
                        interval=str(spec.get("interval", "interval")))
    if not math.isfinite(measured.value):
        n = f" (n = {format_number(measured.n, integral=True)})" if math.isfinite(measured.n) else ""
        measured.missing = f"{what}: too few backbones to estimate{n}"
    return measured


# --------------------------------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------------------------------

def _no_interval(measured: Mapping[str, Measured]) -> str:
    """Why a verdict cannot be given: an estimate without a confidence interval (a range is not one, and is
    compared by its estimate on purpose)."""
    lacking = [f"{name or 'the estimate'} has no interval (n = {format_number(m.n, integral=True)})"
               for name, m in measured.items() if m.interval != "range" and not m.has_interval]
    return "; ".join(lacking)


def _side(m: Measured, threshold: float, above: bool) -> str:
    """Is ``m`` above (``above``) or below ``threshold``? The interval decides; a range compares its estimate."""
    if m.interval == "range":
        return AGREES if (m.value > threshold if above else m.value < threshold) else DISAGREES
    low, high = (m.low, m.high) if above else (-m.high, -m.low)
    t = threshold if above else -threshold
    return AGREES if low > t else DISAGREES if high < t else INCONCLUSIVE


def _not_below(m: Measured, threshold: float) -> str:
    return AGREES if m.high >= threshold else DISAGREES


def _greater(a: Measured, b: Measured) -> str:
    return AGREES if a.low > b.high else DISAGREES if a.high < b.low else INCONCLUSIVE


def _top_includes(m: Measured, patterns: list[str]) -> tuple[str, str]:
    compiled = [re.compile(p, re.IGNORECASE) for p in patterns]
    present = [p for p in compiled if any(p.search(name) for name in m.all_names)]
    if not present:
        return NOT_MEASURABLE, "none of the paper's backbones is in this table"
    hits = [p for p in present if any(p.search(name) for name in m.names)]
    verdict = AGREES if len(hits) == len(present) else DISAGREES if not hits else PARTLY
    return verdict, f"{len(hits)} of the {len(present)} paper backbones in this table are in its top {len(m.names)}"


def verdict(check: Mapping[str, Any], measured: Mapping[str, Measured]) -> tuple[str, str]:
    """``(verdict, reason)`` for one claim's ``check`` on its measured values (``{"": m}`` for a single measure)."""
    missing = list(dict.fromkeys(m.missing for m in measured.values() if m.missing))
    if missing:
        return NOT_MEASURABLE, "; ".join(missing)
    single = next(iter(measured.values()))
    if "top_includes" in check:
        return _top_includes(single, list(check["top_includes"]))
    lacking = _no_interval(measured)
    if lacking:
        return INCONCLUSIVE, lacking
    if "above" in check:
        return _side(single, float(check["above"]), above=True), ""
    if "below" in check:
        return _side(single, float(check["below"]), above=False), ""
    if "not_below" in check:
        return _not_below(single, float(check["not_below"])), ""
    if "greater" in check:
        a, b = check["greater"]
        return _greater(measured[a], measured[b]), ""
    raise ValueError(f"unknown check {dict(check)}; use above, below, not_below, greater or top_includes")


# --------------------------------------------------------------------------------------------------------------------
# Claims -> results
# --------------------------------------------------------------------------------------------------------------------

@dataclass
class ClaimResult:
    """One row of the overview: the paper's claim beside this table's answer."""

    question: str
    chapter: str
    claim: str
    stated: str
    answer: str
    n: str
    verdict: str
    reason: str = ""

    @property
    def marked_verdict(self) -> str:
        """The verdict with its symbol (``✓ agrees``)."""
        return f"{MARKS.get(self.verdict, '')} {self.verdict}".strip()


def _stated(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {format_number(v) if isinstance(v, (int, float)) else v}" for k, v in value.items())
    return format_number(value) if isinstance(value, (int, float)) else str(value)


def _answer(m: Measured) -> str:
    if m.missing:
        return "n/a"
    if m.all_names:
        return "; ".join(m.names)
    if m.interval == "range" and m.has_interval:
        return f"{format_number(m.value)} (range {format_number(m.low)} to {format_number(m.high)})"
    return format_interval(m.value, m.low, m.high)


def _label(name: str) -> str:
    return f"{name} " if name else ""


def _n(m: Measured) -> str:
    return format_number(m.n, integral=True) if math.isfinite(m.n) else ""


def evaluate(document: Mapping[str, Any], figures_root: Path, failed: Mapping[str, str] | None = None
             ) -> list[ClaimResult]:
    """Every claim of ``document`` measured on the notebooks' outputs under ``figures_root``."""
    results = []
    for question in document.get("questions", []):
        for claim in question.get("claims", []):
            spec = claim.get("measure") or {}
            measures = ({"": spec} if "notebook" in spec else dict(spec))
            measured = {name: measure(s, figures_root, failed or {}) for name, s in measures.items()}
            outcome, reason = verdict(claim.get("check") or {}, measured)
            results.append(ClaimResult(
                question=str(question.get("id", "")), chapter=str(question.get("chapter", "")),
                claim=" ".join(str(claim.get("claim", "")).split()), stated=_stated(claim.get("stated", "")),
                answer="; ".join(f"{_label(k)}{_answer(m)}" for k, m in measured.items()),
                n=", ".join(f"{_label(k)}{_n(m)}".strip() for k, m in measured.items() if _n(m)),
                verdict=outcome, reason=reason))
    return results
