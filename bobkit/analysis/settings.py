"""What a setting is, which metrics score each task, and how settings of two tables match.

A **setting** is what was measured: task x dataset x protocol x metric x every parameter that changes the
measurement (image size, train/test sizes, low-shot fraction, epochs, targets, epsilons, ...; never the seed or the
execution settings). The results schema carries it as ``setting_id`` (a hash) and ``setting_params`` (JSON).
The analysis pools rows only when their ``setting_id`` agrees: seeds of one setting are averaged, two settings are
never averaged as if they were seeds, and neither are two runs of one backbone and setting made on different device
types or precisions (``device`` and ``precision`` columns; :func:`one_execution_per_cell`): only the seeds of one
execution are its replicates. :func:`setting_ids` gives each setting a readable label (``setting | metric``,
plus the parameters that tell two settings with the same label apart), one label per ``setting_id``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from bobkit.analysis.errors import InsufficientDataError

#: Columns whose values together name a setting (``setting_id`` is the schema's identity of what was measured).
DEFAULT_SETTING_KEYS: tuple[str, ...] = ("setting_id",)
#: What a setting is measured on, before its parameters: two settings that agree here may still differ in parameters.
BASE_KEYS: tuple[str, ...] = ("task", "dataset", "protocol", "metric")

#: The metric(s) that score each task, as regular expressions tried in order: for each task the first pattern that
#: matches one of its metrics is used, with every metric it matches (each one a setting). A results table from
#: ``bob build`` holds many metrics per run (top5, nll, brier, temperature, ...); scoring all of them would weight
#: tasks by how many numbers they report. Tasks not listed keep ``top1`` when they have it, else every metric.
#: ``mrr_bob`` is the BoB snapshot's MRR on revisited Oxford/Paris (the paper's code: ranks before junk removal),
#: a different quantity from bobkit's ``mrr``: both score retrieval, never in the same setting.
PRIMARY_METRICS: dict[str, tuple[str, ...]] = {
    # top-1 on single-label datasets, mean AUROC on multi-label ones (CheXpert: the paper's "Average AUC"); one
    # pattern, so a table with both keeps each dataset's own score
    "classification": ("top1|mean_auroc",),
    "retrieval": ("mrr|mrr_bob", "map"),
    "detection": ("box_ap",),
    "segmentation": ("mask_ap", "miou"),
    "ood": (r"acc/[^/]+", "top1", "mca"),  # accuracy on each shifted target (not per corruption), else top1
    "robustness": (r"acc/[^/]+/(?!0$)[^/]+", "top1"),  # accuracy under each attack at eps > 0
    "transferability": (),  # estimators predict rankings, they measure nothing: never scored (see notebook 09)
}
#: Clean (in-distribution) accuracy metrics a robustness or OOD run reports about itself.
CLEAN_ACCURACY: tuple[str, ...] = ("id_acc", "top1")


def params_of(setting_params: object) -> dict[str, Any]:
    """The parameters of a ``setting_params`` cell (JSON text, a mapping, or empty)."""
    if isinstance(setting_params, Mapping):
        return dict(setting_params)
    if setting_params is None or (isinstance(setting_params, float) and setting_params != setting_params):
        return {}
    text = str(setting_params).strip()
    return dict(json.loads(text)) if text else {}


def _params_text(params: Mapping[str, Any], keys: Iterable[str]) -> str:
    return ", ".join(f"{k}={params[k]}" for k in sorted(keys) if k in params)


def setting_ids(results: pd.DataFrame, setting_keys: Sequence[str] = DEFAULT_SETTING_KEYS) -> pd.Series:
    """One readable label per row naming its setting, one label per distinct value of ``setting_keys``.

    With the default keys (``setting_id``) the label is ``"<setting> | <metric>"``; settings that share that text
    but differ in parameters get the differing parameters appended (``"... | map [difficulty=hard]"``). Other
    ``setting_keys`` join their values with ``" | "`` (the old behaviour, e.g. ``("setting", "metric")``).
    """
    missing = [k for k in setting_keys if k not in results.columns]
    if missing:
        raise ValueError(f"setting keys {missing} are not columns of the results table")
    if tuple(setting_keys) != DEFAULT_SETTING_KEYS:
        parts = [results[k].astype(str) for k in setting_keys]
        out = parts[0]
        for part in parts[1:]:
            out = out + " | " + part
        return out
    if results.empty:
        return pd.Series([], index=results.index, dtype=object)
    base = results["setting"].astype(str) + " | " + results["metric"].astype(str)
    ids = results["setting_id"].astype(str)
    labels: dict[str, str] = {}
    first = results.assign(_base=base, _id=ids).drop_duplicates("_id")
    for text, group in first.groupby("_base", sort=False):
        if len(group) == 1:
            labels[group["_id"].iloc[0]] = str(text)
            continue
        params = {i: params_of(p) for i, p in zip(group["_id"], group["setting_params"])}
        keys = set().union(*params.values())
        differing = {k for k in keys if len({json.dumps(p.get(k), default=str) for p in params.values()}) > 1}
        for setting_id, p in params.items():
            detail = _params_text(p, differing) or f"id {setting_id[:6]}"
            labels[setting_id] = f"{text} [{detail}]"
    return ids.map(labels)


#: Parameters that make a run low-shot; absent or None means the full training data.
LOW_SHOT_KEYS: tuple[str, ...] = ("shots_per_class", "label_fraction")


def differing_keys(params: Iterable[Mapping[str, Any]]) -> set[str]:
    """The parameter names whose values are not the same in every one of ``params``."""
    params = list(params)
    keys = set().union(*params) if params else set()
    return {k for k in keys if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in params}) > 1}


def readable_params(params: Mapping[str, Any], keys: Iterable[str]) -> str:
    """``keys`` of ``params`` as a reader names them: the low-shot parameters as one phrase (``2-shot``, ``10% of
    the labels``, ``full data``), the others as ``name=value``."""
    keys = set(keys)
    parts = []
    if keys & set(LOW_SHOT_KEYS):
        shots, fraction = params.get("shots_per_class"), params.get("label_fraction")
        parts.append(f"{shots}-shot" if shots else f"{100 * float(fraction):g}% of the labels" if fraction
                     else "full data")
        keys -= set(LOW_SHOT_KEYS)
    parts += [f"{k}={params.get(k)}" for k in sorted(keys)]
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------------------------------
# Primary metrics
# --------------------------------------------------------------------------------------------------------------------

def first_matching(metrics: Iterable[str], patterns: Sequence[str]) -> str | None:
    """The first of ``patterns`` that fully matches one of ``metrics`` (``None`` when none does)."""
    names = list(dict.fromkeys(map(str, metrics)))
    for pattern in patterns:
        if any(re.fullmatch(pattern, m) for m in names):
            return pattern
    return None


def primary_metrics(results: pd.DataFrame, spec: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Only the rows of each task's primary metric(s) (:data:`PRIMARY_METRICS`, or ``spec``); ``attrs["primary"]``
    maps task -> the pattern used."""
    spec = PRIMARY_METRICS if spec is None else spec
    keep = pd.Series(False, index=results.index)
    used: dict[str, str] = {}
    for task, rows in results.groupby("task", sort=True):
        patterns = tuple(spec.get(str(task), ("top1",)))
        pattern = first_matching(rows["metric"], patterns)
        if pattern is None and str(task) not in spec:
            pattern = ".*"
        if pattern is None:
            continue
        used[str(task)] = pattern
        keep.loc[rows.index] = rows["metric"].astype(str).str.fullmatch(pattern)
    out = results[keep].reset_index(drop=True)
    out.attrs = {**results.attrs, "primary": used}
    return out


def main_metric(results: pd.DataFrame, **filters: Any) -> str:
    """The metric to read from the rows matching ``filters``: ``top1`` when present, else the most common one."""
    mask = pd.Series(True, index=results.index)
    for column, allowed in filters.items():
        if allowed is None:
            continue
        allowed = [allowed] if isinstance(allowed, str) else list(allowed)
        mask &= results[column].isin(allowed)
    metrics = results.loc[mask, "metric"]
    if metrics.empty:
        raise InsufficientDataError(f"no rows match {filters}")
    return "top1" if "top1" in set(metrics) else str(metrics.value_counts().index[0])


# --------------------------------------------------------------------------------------------------------------------
# Matching the settings of two tables
# --------------------------------------------------------------------------------------------------------------------

def _settings(table: pd.DataFrame) -> pd.DataFrame:
    frame = table.assign(label=setting_ids(table))
    return frame.drop_duplicates("setting_id")[[*BASE_KEYS, "setting_id", "setting_params", "label"]]


def _compare(mine: Mapping[str, Any], ref: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(agreeing, conflicting, one-sided) parameter names of two settings."""
    shared = set(mine) & set(ref)
    agree = sorted(k for k in shared if json.dumps(mine[k], default=str) == json.dumps(ref[k], default=str))
    conflict = sorted(shared - set(agree))
    one_sided = sorted(set(mine) ^ set(ref))
    return agree, conflict, one_sided


def match_settings(mine: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """For each setting of ``mine``, the setting of ``reference`` it can be compared with.

    Two settings match **exactly** when their ``setting_id`` agrees. Otherwise they match **after dropping
    parameters** when task, dataset, protocol and metric agree and every parameter both record has the same value:
    the parameters only one side records are listed in ``dropped`` (``image_size=64 (yours)``). A parameter both
    record with different values (``difficulty``: medium vs hard) means a different setting: no match (``conflict``
    names it). Among several compatible reference settings the one agreeing on most parameters is taken.

    Returns
    -------
    DataFrame, one row per setting of ``mine``: the base keys, ``mine_label``, ``mine_setting_id``,
    ``reference_label``, ``reference_setting_id`` (``None`` when unmatched), ``match`` (``exact`` | ``dropped`` |
    ``none``), ``dropped`` and ``conflict`` (text).
    """
    rows = []
    ref_settings = _settings(reference)
    ref_by_base = {key: group for key, group in ref_settings.groupby(list(BASE_KEYS), sort=False)}
    for rec in _settings(mine).itertuples(index=False):
        base = tuple(getattr(rec, k) for k in BASE_KEYS)
        row = {**dict(zip(BASE_KEYS, base)), "mine_label": rec.label, "mine_setting_id": rec.setting_id,
               "reference_label": None, "reference_setting_id": None, "match": "none", "dropped": "",
               "conflict": ""}
        candidates = ref_by_base.get(base)
        if candidates is None:
            rows.append(row)
            continue
        exact = candidates[candidates["setting_id"] == rec.setting_id]
        if len(exact):
            row.update(reference_label=exact["label"].iloc[0], reference_setting_id=rec.setting_id, match="exact")
            rows.append(row)
            continue
        mine_params = params_of(rec.setting_params)
        best, best_agree = None, -1
        for cand in candidates.itertuples(index=False):
            ref_params = params_of(cand.setting_params)
            agree, conflict, one_sided = _compare(mine_params, ref_params)
            if conflict:
                row["conflict"] = row["conflict"] or "; ".join(
                    f"{k}: yours {mine_params[k]}, reference {ref_params[k]}" for k in conflict)
                continue
            if len(agree) > best_agree:
                best, best_agree = (cand, one_sided, ref_params), len(agree)
        if best is not None:
            cand, one_sided, ref_params = best
            dropped = [f"{k}={mine_params[k]} (yours)" if k in mine_params else f"{k}={ref_params[k]} (reference)"
                       for k in one_sided]
            row.update(reference_label=cand.label, reference_setting_id=cand.setting_id, match="dropped",
                       dropped=", ".join(dropped), conflict="")
        rows.append(row)
    columns = [*BASE_KEYS, "mine_label", "mine_setting_id", "reference_label", "reference_setting_id", "match",
               "dropped", "conflict"]
    return pd.DataFrame(rows, columns=columns)


def _device_type(rows: pd.DataFrame) -> pd.Series:
    """``cpu``, ``cuda``, ... of each row's ``device`` (``cuda:NVIDIA H100`` -> ``cuda``); ``""`` when unknown."""
    if "device" not in rows:
        return pd.Series("", index=rows.index)
    device = rows["device"].where(rows["device"].notna(), "").astype(str)
    return device.str.split(":").str[0].str.strip().str.lower().replace({"nan": "", "none": ""})


def _precision(rows: pd.DataFrame) -> pd.Series:
    if "precision" not in rows:
        return pd.Series("", index=rows.index)
    precision = rows["precision"].where(rows["precision"].notna(), "").astype(str)
    return precision.str.strip().str.lower().replace({"nan": "", "none": ""})


def execution_kind(rows: pd.DataFrame) -> pd.Series:
    """Each row's execution as far as it moves numbers: ``device type/precision`` (``cuda/bf16``, ``cpu/fp32``; an
    unknown part is empty: ``cpu/``)."""
    return _device_type(rows) + "/" + _precision(rows)


def one_execution_per_cell(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows of each backbone x setting (``setting_id``) that ran on one execution kind, so that only seeds of
    one execution are averaged as replicates.

    Two rows conflict when their device types, or their precisions, are both known and differ (``cpu`` vs ``cuda``,
    ``fp32`` vs ``bf16``); an unknown part (a public table, an older build) conflicts with nothing. Where a backbone's
    rows of a setting conflict, the kind most common in that setting over all backbones is kept (ties: the one with
    most rows of this backbone, then the first by name) and the others are left out; returns the rows kept and one
    sentence per backbone x setting left out.
    """
    if rows.empty or ("device" not in rows and "precision" not in rows):
        return rows, []
    device, precision = _device_type(rows), _precision(rows)
    cells = rows.assign(_dev=device, _prec=precision)
    known = cells.assign(_dev=cells["_dev"].replace("", np.nan), _prec=cells["_prec"].replace("", np.nan))
    spread = known.groupby(["backbone", "setting_id"])[["_dev", "_prec"]].nunique()
    mixed = spread[(spread["_dev"] > 1) | (spread["_prec"] > 1)].index
    if not len(mixed):
        return rows, []
    setting_counts = cells.groupby("setting_id")[["_dev", "_prec"]].value_counts()
    drop = pd.Series(False, index=rows.index)
    notes = []
    for backbone, sid in mixed:
        cell = cells[(cells["backbone"] == backbone) & (cells["setting_id"] == sid)]
        candidates = cell[(cell["_dev"] != "") & (cell["_prec"] != "")].groupby(["_dev", "_prec"]).size()
        if candidates.empty:
            candidates = cell.groupby(["_dev", "_prec"]).size()
        ranked = sorted(candidates.index, key=lambda k: (-int(setting_counts.get((sid, *k), 0)),
                                                          -int(candidates[k]), k))
        dev, prec = ranked[0]
        clash = ((cell["_dev"] != "") & (cell["_dev"] != dev)) | ((cell["_prec"] != "") & (cell["_prec"] != prec))
        drop.loc[cell.index[clash.to_numpy()]] = True
        other = sorted(set(cell.loc[clash, "_dev"] + "/" + cell.loc[clash, "_prec"]))
        label = f"{cell['setting'].iloc[0]} | {cell['metric'].iloc[0]}" if "setting" in cell else str(sid)
        notes.append(f"{backbone} in {label}: {int(clash.sum())} row(s) run on {', '.join(other)} not averaged "
                     f"with those run on {dev}/{prec}")
    return rows[~drop], notes


def one_setting_per_base(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Keep, for each task x dataset x protocol x metric, the rows of one setting only (the one with most backbones;
    ties: the first label), so per-backbone means never average two settings. Returns the rows and the labels of
    the settings left out."""
    if rows.empty or rows.groupby(list(BASE_KEYS))["setting_id"].nunique().max() <= 1:
        return rows, []
    labelled = rows.assign(_label=setting_ids(rows))
    counts = labelled.groupby([*BASE_KEYS, "_label"])["backbone"].nunique().reset_index(name="n")
    counts = counts.sort_values([*BASE_KEYS, "n", "_label"], ascending=[True] * len(BASE_KEYS) + [False, True])
    chosen = set(counts.drop_duplicates(list(BASE_KEYS))["_label"])
    left_out = sorted(set(counts["_label"]) - chosen)
    kept = labelled[labelled["_label"].isin(chosen)].drop(columns="_label")
    return kept, left_out
