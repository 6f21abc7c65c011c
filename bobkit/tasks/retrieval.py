"""Image retrieval with frozen backbone features: no training, rank a database by cosine similarity.

Two protocols, as in the paper's retrieval code (hsouri/bob-retrieval):

``class_folder``
    A labelled split is divided per class into queries (the first ``floor(query_fraction * n_c)`` items of each
    class, after an optional per-class cap) and the database (the rest); a database item is a positive when it
    shares the query's class. The features are exactly those of the linear probe's test split (same backbone,
    dataset, split, image size, ``max_samples`` and seed), so a retrieval cell after a probe cell reads them from
    the feature cache and runs no forward pass.
``revisited``
    Revisited Oxford / Paris (Radenovic et al. 2018): 70 queries against ~5-6k database images, easy + hard
    positives, junk removed from the ranking ("medium"; "easy" and "hard" protocols on request). Images are read
    from the manifest's folder, the ground-truth pickle is verified and converted to JSON once
    (:func:`bobkit.data.revisited.revisited_ground_truth`). Like the paper's code, query images are used whole unless
    ``crop_queries`` (the official protocol crops them to their bounding box).
``gldv2``
    Google Landmarks v2 retrieval (Weyand et al. 2020): the 1,129 test images that have a landmark in
    ``retrieval_solution_v2.1.csv`` are the queries, the 761,757 index images the database, the listed index
    images the positives (the paper's code, too, keeps only the test images with ground truth).
``copydays``
    INRIA Copydays: the attacked copies (``copydays_attacks``: all 3,055, or the 229 ``strong`` ones most papers
    report, the JPEG or the crop blocks) are the queries, the 157 originals the database; a copy's one positive is
    its original (:func:`bobkit.data.sources.load_copydays`).

For ``class_folder`` the paper caps each class before drawing queries (``max_per_class``: 50 for INSTRE-S1 and
ObjectNet, 5 for iNaturalist) and uses every image of the split (``max_samples: null``).

Metrics: ``map``, ``mrr``, ``precision@k``, ``recall@k`` (k in ``ks``), and for ``revisited`` also ``mp@k``
(the revisitop code's mP@k, which the community reports for Oxford/Paris), all in [0, 1], each with its standard
error over the queries (``se/<metric>``); AP is the trapezoidal AP of the revisited benchmark code, which the
paper uses for every retrieval dataset (``ap="step"`` gives scikit-learn's non-interpolated AP).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bobkit import backbones
from bobkit.data import ImageDataset, MissingDataError, sources
from bobkit.data.revisited import revisited_ground_truth
from bobkit.eval.metrics import (
    AP_MODES,
    REVISITED_PROTOCOLS,
    class_retrieval_metrics,
    listed_retrieval_metrics,
    revisited_retrieval_metrics,
)
from bobkit.features.device import Execution, frozen_backbone
from bobkit.features.extract import extract_features, is_cached, run_forward
from bobkit.tasks import blocks
from bobkit.tasks.common import as_list, inference_batch_size
from bobkit.tasks.contract import Metric, Param, TaskSpec
from bobkit.tasks.harness import task_entry

PROTOCOLS = ("class_folder", "revisited", "gldv2", "copydays")
#: The datasets of each protocol with its own ground truth (the others use class folders of a registry dataset).
PROTOCOL_DATASETS: dict[str, tuple[str, ...]] = {
    "revisited": ("roxford5k", "rparis6k"), "gldv2": ("gldv2",), "copydays": ("copydays",),
}
#: Datasets this task builds itself (on top of :func:`bobkit.data.dataset_names`).
DATASETS = tuple(name for names in PROTOCOL_DATASETS.values() for name in names)
COPYDAYS_ATTACKS = ("all", *sources.COPYDAYS_BLOCKS)


def _protocol_of(dataset: str) -> str:
    """The protocol a dataset's ground truth calls for (``class_folder`` for registry datasets)."""
    return next((protocol for protocol, names in PROTOCOL_DATASETS.items() if dataset in names), "class_folder")


def _check(p: dict[str, Any]) -> None:
    """Rules between parameters: the protocol fits the dataset."""
    needed = _protocol_of(p["dataset"])
    if p["protocol"] != needed:
        if needed == "class_folder":
            raise SPEC.error("dataset", p["dataset"], f"has no {p['protocol']} ground truth: protocol "
                                                      f"{p['protocol']!r} needs one of "
                                                      f"{PROTOCOL_DATASETS[p['protocol']]}")
        raise SPEC.error("dataset", p["dataset"], f"has no class folders; use protocol={needed!r}")


SPEC = TaskSpec(
    name="retrieval",
    summary="Image retrieval with frozen features: rank a database by cosine similarity, no training.",
    parameters=(
        blocks.backbone_param(),
        blocks.dataset_param("fashion_mnist", "a dataset of the registry, or roxford5k | rparis6k (revisited), gldv2, "
                                              "copydays", blocks.dataset_lookup(DATASETS)),
        blocks.protocol_param("class_folder", PROTOCOLS, "class_folder (positives share the class), or the "
                                                         "dataset's own ground truth: revisited, gldv2, copydays"),
        blocks.image_size_param(),
        blocks.split_param("split", "test", "the split whose items become queries + database (the probe's test "
                                            "split: cache shared)"),
        blocks.size_param("max_samples", 1000, "class-stratified subset of the split, as the probe's max_test "
                                               "(None: all)"),
        Param("query_fraction", float, 0.2, "per class: the first floor(fraction * n) items are queries", low=0.0,
              low_open=True, high=1.0, high_open=True),
        Param("max_per_class", int, None, "cap per class before splitting (the paper: 50 for ObjectNet/INSTRE, 5 "
                                          "for iNat)", low=2, high=blocks.MAX_ITEMS),
        Param("revisited_protocol", str, "medium", "revisited positives (medium: easy + hard, junk ignored)",
              choices=REVISITED_PROTOCOLS),
        Param("crop_queries", bool, False, "revisited: crop queries to their box (official protocol; the paper's "
                                           "code did not)"),
        Param("copydays_attacks", str, "all", "copydays: which attacked copies are the queries (strong: the "
                                              "subset most papers report)", choices=COPYDAYS_ATTACKS),
        Param("gnd_sha256", str, None, "revisited: expected sha256 of gnd_<dataset>.pkl (default: the manifest's)",
              pattern=r"[0-9a-fA-F]{64}"),
        Param("ap", str, "trapezoid", "average precision: trapezoid (revisited benchmark code, the paper) or step "
                                      "(scikit-learn)", choices=AP_MODES),
        Param("ks", list, [1, 5, 10], "cut-offs of precision@k and recall@k", item=int, low=1, high=10_000,
              min_items=1),
        blocks.batch_size_param(kind="execution", doc="forward batch (frozen features: no effect on the results)"),
        blocks.seed_param(),
        *blocks.device_params(),
        *blocks.EXECUTION,
        blocks.OUTPUT_DIR,
    ),
    metrics=(
        Metric("map", "mean average precision over the queries", primary=True, n_items="n_queries"),
        Metric("mrr", "mean reciprocal rank of the first positive", n_items="n_queries"),
        Metric("precision@*", "mean precision of the top k", n_items="n_queries"),
        Metric("recall@*", "mean recall of the top k", n_items="n_queries"),
        Metric("mp@*", "mean precision at k, k capped by the query's positives", n_items="n_queries"),
        *blocks.COMMON_DESCRIPTORS,
    ),
    check=_check,
)
#: The declared defaults (what the notebook's parameters cell holds).
PARAMETERS: dict[str, Any] = SPEC.defaults()
validate_params = SPEC.validate


def class_folder_split(
    labels: np.ndarray, *, query_fraction: float = 0.2, max_per_class: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class query / database indices: the first ``floor(query_fraction * n_c)`` items of each class are queries.

    Items keep their order within a class (the paper sorts file names; here the order is the split's, itself a
    seeded stratified sample). ``max_per_class`` first caps each class at its first ``n`` items. A class too
    small to give one query (``n_c < 1 / query_fraction``) contributes only database items, as in the paper.
    """
    labels = np.asarray(labels)
    queries: list[np.ndarray] = []
    database: list[np.ndarray] = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        if max_per_class is not None:
            idx = idx[: int(max_per_class)]
        n_query = int(len(idx) * query_fraction)
        queries.append(idx[:n_query])
        database.append(idx[n_query:])
    return np.sort(np.concatenate(queries)), np.sort(np.concatenate(database))


@task_entry(SPEC)
def run(p: dict[str, Any], ex: Execution) -> dict[str, float]:
    """Run one retrieval cell (class folders, revisited Oxford / Paris, GLDv2 or Copydays); returns metric name ->
    value."""
    if p["protocol"] == "class_folder":
        return _run_class_folder(p, ex)
    if p["protocol"] == "revisited":
        return _run_revisited(p, ex)
    return _run_listed(p, ex)


def _run_class_folder(p: dict[str, Any], ex: Execution) -> dict[str, float]:
    cached = is_cached(p["backbone"], p["dataset"], p["split"], image_size=p["image_size"],
                       max_samples=p["max_samples"], seed=p["seed"], device=ex.device, precision=ex.precision)
    # No model is built when the cache serves the features (a retrieval cell after a probe cell).
    model = None if cached else backbones.create_model(
        p["backbone"], num_classes=0, image_size=p["image_size"], seed=p["seed"])
    if model is not None:
        ex = ex.for_model(model, p["channels_last"])  # what extraction resolves too (for the metrics)
    fs = extract_features(
        p["backbone"], p["dataset"], p["split"], image_size=p["image_size"], max_samples=p["max_samples"],
        seed=p["seed"], batch_size=inference_batch_size(p["batch_size"], ex), device=ex.device, model=model,
        precision=ex.precision, channels_last=p["channels_last"], loader_workers=ex.loader_workers,
        compile=ex.compile,
    )
    q_idx, db_idx = class_folder_split(fs.labels, query_fraction=float(p["query_fraction"]),
                                       max_per_class=p["max_per_class"])
    if len(q_idx) == 0:
        raise ValueError(f"no queries: every class has fewer than {1 / float(p['query_fraction']):.0f} items "
                         f"(max_samples={p['max_samples']}, max_per_class={p['max_per_class']})")
    t0 = time.perf_counter()
    features = np.asarray(fs.features)
    metrics = class_retrieval_metrics(
        features[q_idx], fs.labels[q_idx], features[db_idx], fs.labels[db_idx],
        ks=as_list(p["ks"], int), ap=p["ap"], device=ex.device,
    )
    metrics.update(n_database=float(len(db_idx)), extract_seconds=fs.seconds,
                   retrieval_seconds=time.perf_counter() - t0, feature_cache_hit=float(fs.cache_hit))
    metrics.update(ex.as_metrics())  # exec_*: how it ran (floats; not scores)
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# Revisited Oxford / Paris
# ----------------------------------------------------------------------------------------------------------------


def load_revisited(
    name: str,
    *,
    storage_size: int = 256,
    crop_queries: bool = False,
    gnd_sha256: str | None = None,
    root: str | Path | None = None,
) -> tuple[ImageDataset, ImageDataset, list[dict[str, Any]]]:
    """Queries, database and per-query ground truth of ``roxford5k`` / ``rparis6k``.

    Parameters
    ----------
    name
        ``"roxford5k"`` or ``"rparis6k"``.
    storage_size
        Square decode size of the images (shorter side resized, centre crop), as for every folder dataset.
    crop_queries
        Crop each query to its ground-truth bounding box first (the official protocol; the paper's code did not).
    gnd_sha256
        Expected sha256 of ``gnd_<name>.pkl``; default: the manifest's, else the user's pin
        (``bob data --pin <name> <file>``). With neither, the pickle is refused before it is unpickled.
    root
        The dataset folder (``<root>/jpg/*.jpg`` and ``<root>/gnd_<name>.pkl``); default: the manifest's
        folder under ``$BOB_DATA_DIR`` or the data cache.
    """
    from bobkit.data import resolve_dir

    if name not in PROTOCOL_DATASETS["revisited"]:
        raise ValueError(f"revisited dataset {name!r} is not one of {PROTOCOL_DATASETS['revisited']}")
    folder = Path(root) if root is not None else resolve_dir(name)
    pickle_path = folder / f"gnd_{name}.pkl"
    if not pickle_path.is_file():
        raise MissingDataError(f"{pickle_path} not found: download it from "
                               f"http://cmp.felk.cvut.cz/revisitop/data/datasets/{name}/gnd_{name}.pkl")
    gt = revisited_ground_truth(name, pickle_path, sha256=gnd_sha256)
    image_dir = folder / "jpg"
    missing = [f for f in gt.imlist[:20] + gt.qimlist if not (image_dir / f"{f}.jpg").is_file()]
    if missing:
        raise MissingDataError(f"{name}: images missing from {image_dir}, e.g. {missing[0]}.jpg")
    database = ImageDataset(None, np.zeros(len(gt.imlist), np.int64), ["database"], name, "database",
                            paths=[image_dir / f"{f}.jpg" for f in gt.imlist], storage_size=storage_size)
    query_images = np.stack([
        _decode_query(image_dir / f"{f}.jpg", g.get("bbx") if crop_queries else None, storage_size)
        for f, g in zip(gt.qimlist, gt.gnd)
    ])
    queries = ImageDataset(query_images, np.zeros(len(gt.qimlist), np.int64), ["query"], name, "query")
    return queries, database, gt.gnd


def _decode_query(path: Path, bbx: list[float] | None, size: int) -> np.ndarray:
    """One query image as RGB uint8 (optionally cropped to ``bbx``), shorter side to ``size``, centre square."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if bbx is not None:
            x1, y1, x2, y2 = (float(v) for v in bbx)
            im = im.crop((max(0, int(x1)), max(0, int(y1)), min(im.width, int(np.ceil(x2))),
                          min(im.height, int(np.ceil(y2)))))
        scale = size / min(im.width, im.height)
        w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
        im = im.resize((w, h), Image.BICUBIC)
        left, top = (w - size) // 2, (h - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _run_revisited(p: dict[str, Any], ex: Execution) -> dict[str, float]:
    t0 = time.perf_counter()
    queries, database, gnd = load_revisited(p["dataset"], crop_queries=bool(p["crop_queries"]),
                                            gnd_sha256=p["gnd_sha256"])
    # file-backed datasets are decoded batch by batch (by the prefetch threads when loader_workers > 0)
    model, ex = frozen_backbone(p["backbone"], ex, image_size=p["image_size"], seed=p["seed"],
                                channels_last=p["channels_last"])
    config = backbones.data_config(p["backbone"], image_size=p["image_size"])
    batch = inference_batch_size(p["batch_size"], ex)
    q = run_forward(model, queries, config, p["image_size"], batch, ex)
    db = run_forward(model, database, config, p["image_size"], batch, ex)
    extract_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    metrics = revisited_retrieval_metrics(q, db, gnd, protocol=p["revisited_protocol"], ks=as_list(p["ks"], int),
                                          ap=p["ap"], device=ex.device)
    metrics.update(n_database=float(len(db)), extract_seconds=extract_seconds,
                   retrieval_seconds=time.perf_counter() - t1, feature_cache_hit=0.0)
    metrics.update(ex.as_metrics())
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# Listed ground truth: Google Landmarks v2, Copydays
# ----------------------------------------------------------------------------------------------------------------


def load_listed(name: str, *, storage_size: int = 256,
                copydays_attacks: str = "all") -> tuple[ImageDataset, ImageDataset, list[np.ndarray]]:
    """Queries, database and each query's positive database positions of ``gldv2`` or ``copydays``."""
    if name == "gldv2":
        src = sources.load_gldv2_retrieval()
    elif name == "copydays":
        src = sources.load_copydays(copydays_attacks)
    else:
        raise ValueError(f"dataset {name!r} has no listed ground truth (gldv2, copydays)")

    def as_dataset(part: sources.FileSource, split: str) -> ImageDataset:
        return ImageDataset(None, part.labels, part.classes, name, split, paths=part.paths,
                            storage_size=storage_size, meta={**part.meta, "file_backed": True})

    return as_dataset(src.queries, "query"), as_dataset(src.database, "database"), list(src.positives)


def _run_listed(p: dict[str, Any], ex: Execution) -> dict[str, float]:
    t0 = time.perf_counter()
    queries, database, positives = load_listed(p["dataset"], copydays_attacks=p["copydays_attacks"])
    model, ex = frozen_backbone(p["backbone"], ex, image_size=p["image_size"], seed=p["seed"],
                                channels_last=p["channels_last"])
    config = backbones.data_config(p["backbone"], image_size=p["image_size"])
    batch = inference_batch_size(p["batch_size"], ex)
    q = run_forward(model, queries, config, p["image_size"], batch, ex)
    db = run_forward(model, database, config, p["image_size"], batch, ex)
    extract_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    metrics = listed_retrieval_metrics(q, db, positives, ks=as_list(p["ks"], int), ap=p["ap"], device=ex.device)
    metrics.update(n_database=float(len(db)), extract_seconds=extract_seconds,
                   retrieval_seconds=time.perf_counter() - t1, feature_cache_hit=0.0)
    metrics.update(ex.as_metrics())
    return metrics
