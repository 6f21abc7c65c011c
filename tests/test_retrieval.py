"""Retrieval task: query/database split, feature-cache sharing with the probe, revisited builder, offline claim."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
from PIL import Image

from bobkit.tasks import retrieval
from bobkit.tasks.retrieval import class_folder_split

PACKAGED = "mobilenetv2_100.packaged_tv_in1k"
# Small and shared by the tests below (and test_robustness / test_ood), so the feature cache serves repeats.
TINY = dict(image_size=32, max_samples=300, num_threads=1, device="cpu")


def random_init_control(packaged: str) -> str:
    """The same architecture untrained when the registry has it, else the resnet18 control."""
    from bobkit.backbones import backbone_names

    same = packaged.split(".")[0] + ".random_init"
    return same if same in backbone_names() else "resnet18.random_init"


def test_class_folder_split_takes_first_fifth_of_each_class():
    labels = np.array([0] * 10 + [1] * 7 + [2] * 3)
    q, db = class_folder_split(labels, query_fraction=0.2)
    assert set(q) == {0, 1, 10}  # floor(0.2*10)=2, floor(0.2*7)=1, floor(0.2*3)=0
    assert len(np.intersect1d(q, db)) == 0 and len(q) + len(db) == len(labels)
    q_cap, db_cap = class_folder_split(labels, query_fraction=0.2, max_per_class=5)
    assert set(q_cap) == {0, 10} and len(db_cap) == 4 + 4 + 3 - 0


def test_unknown_parameter_is_named():
    with pytest.raises(TypeError, match="max_sample"):
        retrieval.run(max_sample=10)


def test_bad_protocol_values_are_rejected():
    with pytest.raises(ValueError, match="revisited"):
        retrieval.run(protocol="revisited", dataset="fashion_mnist")
    with pytest.raises(ValueError, match="query_fraction"):
        retrieval.run(query_fraction=1.5)


def test_pretrained_beats_random_init_on_fashion_mnist():
    pretrained = retrieval.run(backbone=PACKAGED, **TINY)
    control = retrieval.run(backbone=random_init_control(PACKAGED), **TINY)
    for m in (pretrained, control):  # standard errors over the queries
        assert m["n_queries"] == 60 and 0 < m["se/map"] < 0.1 and 0 < m["se/precision@5"] < 0.1
    assert pretrained["n_queries"] == 60 and pretrained["n_database"] == 240
    for metric in ("map", "mrr", "precision@1"):
        assert pretrained[metric] > control[metric] + 0.1, (metric, pretrained[metric], control[metric])
    for m in (pretrained, control):
        assert 0 <= m["map"] <= 1 and 0 <= m["recall@10"] <= 1
        assert m["recall@1"] <= m["recall@5"] <= m["recall@10"]


def test_retrieval_after_linear_probe_reads_the_cache():
    from bobkit.tasks import classification

    probe = classification.run(backbone=PACKAGED, dataset="fashion_mnist", image_size=32, max_train=100,
                               max_test=300, num_threads=1, device="cpu")
    assert probe["top1"] > 0.3
    ret = retrieval.run(backbone=PACKAGED, dataset="fashion_mnist", **TINY)
    assert ret["feature_cache_hit"] == 1.0
    assert ret["extract_seconds"] < 1.0


def _pattern(seed: int, size: int = 48) -> np.ndarray:
    """A blocky random colour image (distinct per seed, robust to resizing)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.kron(blocks, np.ones((size // 4, size // 4, 1), dtype=np.uint8))


def _write_revisited(root, name: str = "roxford5k") -> str:
    """A tiny revisited-style dataset: 2 queries, 8 database images, gnd pickle; returns the pickle's sha256."""
    folder = root / name
    (folder / "jpg").mkdir(parents=True)
    noise = np.random.default_rng(9)

    def save(fname: str, img: np.ndarray) -> None:
        jitter = noise.integers(-8, 9, size=img.shape)
        noisy = np.clip(img.astype(int) + jitter, 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / "jpg" / f"{fname}.jpg")

    # database: 0-2 copies of pattern 100 (query 0), 3-4 of pattern 200 (query 1), 5-7 distractors
    sources = [100, 100, 100, 200, 200, 301, 302, 303]
    for i, s in enumerate(sources):
        save(f"db{i}", _pattern(s))
    save("q0", _pattern(100))
    save("q1", _pattern(200))
    gnd = {
        "imlist": [f"db{i}" for i in range(8)],
        "qimlist": ["q0", "q1"],
        "gnd": [
            {"easy": np.array([0, 1]), "hard": np.array([2]), "junk": np.array([5]), "bbx": [0.0, 0.0, 48.0, 48.0]},
            {"easy": [3], "hard": [4], "junk": [], "bbx": [0.0, 0.0, 48.0, 48.0]},
        ],
    }
    data = pickle.dumps(gnd, protocol=4)
    (folder / f"gnd_{name}.pkl").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_revisited_builder_reads_images_and_ground_truth(tmp_path):
    sha = _write_revisited(tmp_path)
    queries, database, gnd = retrieval.load_revisited("roxford5k", root=tmp_path / "roxford5k", gnd_sha256=sha,
                                                      storage_size=32, crop_queries=True)
    assert len(queries) == 2 and len(database) == 8
    assert queries.images.shape == (2, 32, 32, 3)
    assert gnd[0]["easy"] == [0, 1] and gnd[0]["junk"] == [5]
    with pytest.raises(ValueError, match="sha256"):
        retrieval.load_revisited("roxford5k", root=tmp_path / "roxford5k", gnd_sha256="0" * 64)


def test_revisited_protocol_end_to_end(tmp_path, monkeypatch):
    sha = _write_revisited(tmp_path)
    monkeypatch.setenv("BOB_DATA_DIR", str(tmp_path))
    m = retrieval.run(backbone=PACKAGED, dataset="roxford5k", protocol="revisited", gnd_sha256=sha,
                      image_size=32, num_threads=1, device="cpu")
    assert m["n_queries"] == 2 and m["n_database"] == 8
    # near-copies of the query rank first for a pretrained backbone
    assert m["mrr"] == 1.0 and m["map"] > 0.8
    assert m["se/mrr"] == 0.0 and {"mp@1", "mp@5", "se/mp@5"} <= set(m)  # mP@k beside precision@k
    assert m["mp@5"] >= m["precision@5"]  # q1 has 2 positives: mP@5 divides by 2, precision@5 by 5


def test_execution_settings_are_recorded_and_bf16_stays_close_to_fp32():
    """bf16 autocast is opt-in on CPU (fp32 by default) and gets its own feature-cache entry.

    Tolerance: bf16 keeps every feature vector at cosine >= 0.99 to fp32 (test_fast_paths); on these 300 items
    that moved mAP by 0.002 and MRR by 0.002 (measured), so |delta mAP| <= 0.02 and |delta MRR| <= 0.05 (3 of
    the 60 queries' first hits) allow for near-tie rank flips without hiding a broken extraction.
    """
    from bobkit.features.device import execution_defaults

    fp32 = retrieval.run(backbone=PACKAGED, **TINY)
    bf16 = retrieval.run(backbone=PACKAGED, precision="bf16", channels_last=False, loader_workers=1, **TINY)
    assert fp32["exec_cuda"] == 0.0 and fp32["exec_autocast_bits"] == 32.0 and fp32["exec_bf16"] == 0.0
    assert fp32["exec_loader_workers"] == float(execution_defaults("cpu")["loader_workers"])
    assert bf16["exec_autocast_bits"] == 16.0 and bf16["exec_bf16"] == 1.0
    assert bf16["exec_channels_last"] == 0.0 and bf16["exec_loader_workers"] == 1.0
    assert bf16["exec_compile"] == 0.0 and bf16["exec_grad_checkpointing"] == 0.0
    assert abs(bf16["map"] - fp32["map"]) <= 0.02, (bf16["map"], fp32["map"])
    assert abs(bf16["mrr"] - fp32["mrr"]) <= 0.05, (bf16["mrr"], fp32["mrr"])
