"""Tests of bobkit.data: manifest, verification, download, dataset builders, sampling and transforms."""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import bobkit.data as bd
from bobkit.data import manifest as mf
from bobkit.data import revisited as rv
from bobkit.data import sources
from bobkit.data import verify as dv

REFERENCE_DIR = Path(bd.__file__).resolve().parents[1] / "reference"
FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
REFERENCE_TABLES = {
    "timm_results_imagenet": "timm-results/results-imagenet.csv",
    "timm_results_imagenet_r": "timm-results/results-imagenet-r.csv",
    "timm_results_imagenet_r_clean": "timm-results/results-imagenet-r-clean.csv",
    "timm_results_imagenet_a": "timm-results/results-imagenet-a.csv",
    "timm_results_imagenet_a_clean": "timm-results/results-imagenet-a-clean.csv",
    "timm_model_metadata_in1k": "timm-results/model_metadata-in1k.csv",
    "timm_benchmark_infer_gpu": "timm-results/benchmark-infer-amp-nchw-pt240-cu124-rtx4090.csv",
    "timm_benchmark_infer_cpu": "timm-results/benchmark-infer-fp32-nchw-pt240-cpu-i9_10940x-dynamo.csv",
    "bob_retrieval_snapshot": "bob/retrieval_snapshot_2023-05.csv",
    "bob_backbones_catalog": "bob/backbones.csv",
}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own bobkit cache (hash cache, downloads) and no inherited BOB_DATA_DIR."""
    monkeypatch.setenv("BOB_CACHE_DIR", str(tmp_path_factory.mktemp("bobcache")))
    monkeypatch.delenv("BOB_DATA_DIR", raising=False)
    monkeypatch.delenv("BOB_DATA_MANIFEST", raising=False)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_manifest(path: Path, entries: list[dict]) -> bd.Manifest:
    path.write_text(yaml.safe_dump({"version": 1, "entries": entries}, sort_keys=False))
    return bd.load_manifest(path)


def _table_entry(name: str, filename: str, sha256: str | None, url: str = "https://example.org/x.csv",
                 **extra) -> dict:
    return dict(name=name, kind="reference_table", tasks=["analysis"], description="test table", url=url,
                licence="CC0", layout=filename, download="direct", filename=filename, sha256=sha256,
                size_bytes=None, **extra)


# ------------------------------------------------------------------------------------------------------------
# The shipped manifest
# ------------------------------------------------------------------------------------------------------------


def test_shipped_manifest_loads_and_every_entry_is_documented():
    m = bd.load_manifest()
    assert len(m) >= 40
    for e in m:
        assert e.url.startswith(("http://", "https://")), e.name
        assert e.licence.strip() and e.layout.strip() and e.description.strip(), e.name
        assert e.kind in mf.KINDS and e.download in mf.DOWNLOAD_MODES, e.name
        for f in e.files:
            assert f.sha256 is None or len(f.sha256) == 64, (e.name, f.filename)
            if e.download == "direct":
                assert f.url and f.url.startswith(("http://", "https://")), (e.name, f.filename)
    expected = {"fashion_mnist", "mnist5k", "sklearn_digits", "lfw_subset", "imagenet_1k", "imagenet_1k_1pct",
                "imagenet_1k_10pct", "cifar100", "flowers102", "fgvc_aircraft", "eurosat", "chexpert",
                "cub200_2011", "inat2021_val", "objectnet", "instre", "gldv2", "roxford5k", "rparis6k",
                "copydays", "imagenet_a", "imagenet_r", "imagenet_sketch", "imagenet_v2", "visda2017",
                "coco2017", "sim10k", "cityscapes", *REFERENCE_TABLES}
    assert expected <= set(m.names())
    for name, filename in REFERENCE_TABLES.items():
        assert m.entry(name).filename == filename
    # every get_dataset dataset points at a manifest entry
    for info in bd.DATASETS.values():
        assert info.manifest in m, info.name


def test_unknown_manifest_entry_names_it_and_close_matches():
    with pytest.raises(bd.UnknownDatasetError, match="timm_results_imagnet") as ei:
        bd.load_manifest().entry("timm_results_imagnet")
    assert "timm_results_imagenet" in ei.value.close_matches


def _shipped_copy(filename: str) -> Path:
    """The copy of a public table that ships inside bobkit (``timm-results/x.csv`` -> ``reference/timm/x.csv``)."""
    folder, name = filename.split("/")
    return REFERENCE_DIR / {"timm-results": "timm", "bob": "bob"}[folder] / name


@pytest.fixture
def user_data_dir(tmp_path):
    """A ``$BOB_DATA_DIR`` laid out as the manifest's filenames say, filled from the copies bobkit ships."""
    root = tmp_path / "data"
    for filename in REFERENCE_TABLES.values():
        (root / filename).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_shipped_copy(filename), root / filename)
    return root


@pytest.mark.parametrize("name", sorted(REFERENCE_TABLES))
def test_reference_tables_resolve_and_verify(name, monkeypatch, user_data_dir):
    monkeypatch.setenv("BOB_DATA_DIR", str(user_data_dir))
    path = bd.resolve(name)
    assert path == user_data_dir / REFERENCE_TABLES[name]
    assert path.stat().st_size == bd.load_manifest().entry(name).size_bytes


def test_reference_tables_resolve_to_the_shipped_copies_without_a_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("BOB_DATA_DIR", str(tmp_path / "empty"))
    for name, filename in REFERENCE_TABLES.items():
        assert bd.resolve(name) == _shipped_copy(filename)


def test_bob_data_dir_may_hold_several_directories(tmp_path, monkeypatch, user_data_dir):
    import os

    monkeypatch.setenv("BOB_DATA_DIR", os.pathsep.join([str(tmp_path / "nothing"), str(user_data_dir)]))
    assert bd.resolve("bob_backbones_catalog") == user_data_dir / "bob" / "backbones.csv"


def test_status_reports_offline_entries_present():
    df = bd.status()
    assert {"name", "kind", "present", "where"} <= set(df.columns)
    row = df.set_index("name").loc["sklearn_digits"]
    assert row["present"] == "yes" and "sklearn" in row["where"]
    assert df.set_index("name").loc["imagenet_1k"].present == "no"


# ------------------------------------------------------------------------------------------------------------
# Validation, resolve, checksums, download
# ------------------------------------------------------------------------------------------------------------


def test_bad_manifest_entry_is_named(tmp_path):
    bad = _table_entry("broken_table", "t.csv", None)
    del bad["licence"]
    with pytest.raises(bd.ManifestError, match="broken_table.*licence"):
        _write_manifest(tmp_path / "m.yaml", [_table_entry("ok", "a.csv", None), bad])
    with pytest.raises(bd.ManifestError, match="twice"):
        _write_manifest(tmp_path / "m2.yaml", [_table_entry("dup", "a.csv", None), _table_entry("dup", "b.csv", None)])
    with pytest.raises(bd.ManifestError, match="sha256"):
        _write_manifest(tmp_path / "m3.yaml", [_table_entry("short", "a.csv", "abc123")])


def test_checksum_mismatch_names_file_expected_and_actual(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    (data_dir / "t").mkdir(parents=True)
    f = data_dir / "t" / "table.csv"
    f.write_bytes(b"a,b\n1,2\n")
    wrong = "0" * 64
    m = _write_manifest(tmp_path / "m.yaml", [_table_entry("tbl", "t/table.csv", wrong)])
    monkeypatch.setenv("BOB_DATA_DIR", str(data_dir))
    with pytest.raises(bd.ChecksumError) as ei:
        m.resolve("tbl")
    msg = str(ei.value)
    assert str(f) in msg and wrong in msg and _sha256(f.read_bytes()) in msg
    # the right hash verifies, and verify=False skips the check
    m_ok = _write_manifest(tmp_path / "m_ok.yaml", [_table_entry("tbl", "t/table.csv", _sha256(f.read_bytes()))])
    assert m_ok.resolve("tbl") == f
    assert m.resolve("tbl", verify=False) == f


def test_changed_file_is_rehashed_not_served_from_cache(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    f = data_dir / "x.bin"
    f.write_bytes(b"first")
    m = _write_manifest(tmp_path / "m.yaml", [_table_entry("x", "x.bin", _sha256(b"first"))])
    monkeypatch.setenv("BOB_DATA_DIR", str(data_dir))
    calls = []
    real = dv.digest_stream
    monkeypatch.setattr(dv, "digest_stream", lambda h, a="sha256": calls.append(h.name) or real(h, a))
    m.resolve("x")
    m.resolve("x")
    assert len(calls) == 1  # second resolve answered from the memo (same inode, size and change time)
    f.write_bytes(b"second, longer")
    with pytest.raises(bd.ChecksumError):
        m.resolve("x")
    assert len(calls) == 2


def test_missing_file_names_file_places_and_url(tmp_path, monkeypatch):
    url = "https://example.org/data/table.csv"
    m = _write_manifest(tmp_path / "m.yaml", [_table_entry("tbl", "t/table.csv", None, url=url)])
    monkeypatch.setenv("BOB_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(bd.MissingDataError) as ei:
        m.resolve("tbl")
    msg = str(ei.value)
    assert "t/table.csv" in msg and url in msg and str(tmp_path / "data" / "t" / "table.csv") in msg
    assert isinstance(ei.value, FileNotFoundError)


def test_offline_location_and_alternate_hash(tmp_path):
    src = tmp_path / "elsewhere" / "repack.gz"
    src.parent.mkdir()
    src.write_bytes(b"debian repack")
    entry = _table_entry("t", "t/orig.gz", "1" * 64, alternates=[{"sha256": _sha256(b"debian repack"),
                                                                 "size_bytes": 13, "source": "repack"}],
                         offline=[{"path": str(src)}])
    m = _write_manifest(tmp_path / "m.yaml", [entry])
    assert m.resolve("t") == src


def test_download_file_url_round_trip(tmp_path):
    payload = b"model,top1\nresnet50,80.4\n" * 100
    upstream = tmp_path / "upstream" / "results.csv"
    upstream.parent.mkdir()
    upstream.write_bytes(payload)
    m = _write_manifest(tmp_path / "m.yaml", [
        _table_entry("good", "r/results.csv", _sha256(payload), url=upstream.as_uri()),
        _table_entry("bad", "r/bad.csv", "f" * 64, url=upstream.as_uri()),
    ])
    dest = tmp_path / "dl"
    (got,) = m.download("good", dest_dir=dest)
    assert got == dest / "r" / "results.csv" and got.read_bytes() == payload
    assert not [p for p in got.parent.iterdir() if p.name.endswith(".part")]
    # default destination is the bobkit data cache, where resolve() finds it
    (cached,) = m.download("good")
    assert m.resolve("good") == cached
    with pytest.raises(bd.ChecksumError, match="bad.csv"):
        m.download("bad", dest_dir=dest)
    assert sorted(p.name for p in (dest / "r").iterdir()) == ["results.csv"]  # nothing half-written left


def test_download_failure_names_the_url_and_leaves_nothing(tmp_path):
    missing = (tmp_path / "upstream" / "gone.csv").as_uri()  # fails like an unreachable host, without a network
    m = _write_manifest(tmp_path / "m.yaml", [_table_entry("gone", "r/gone.csv", "1" * 64, url=missing)])
    with pytest.raises(bd.DownloadError, match="gone.csv") as info:
        m.download("gone", dest_dir=tmp_path / "dl")
    assert info.value.url == missing and "r/gone.csv" in str(info.value)
    assert not list((tmp_path / "dl").rglob("*.part"))


def test_download_refuses_manual_entries():
    with pytest.raises(bd.MissingDataError, match="image-net.org"):
        bd.download("imagenet_1k")


# ------------------------------------------------------------------------------------------------------------
# IDX and Fashion-MNIST
# ------------------------------------------------------------------------------------------------------------


def test_read_idx_synthetic(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 3, 4) + arr.tobytes()
    (tmp_path / "a.idx").write_bytes(raw)
    with gzip.open(tmp_path / "a.idx.gz", "wb") as fh:
        fh.write(raw)
    for name in ("a.idx", "a.idx.gz"):
        np.testing.assert_array_equal(sources.read_idx(tmp_path / name), arr)
    ints = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "i.idx").write_bytes(b"\x00\x00\x0c\x01" + struct.pack(">I", 3) + ints.tobytes())
    np.testing.assert_array_equal(sources.read_idx(tmp_path / "i.idx"), [1, -2, 70000])
    (tmp_path / "short.idx").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="payload"):
        sources.read_idx(tmp_path / "short.idx")


@pytest.mark.skipif(not FMNIST_DEBIAN.exists(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_from_idx():
    train = bd.get_dataset("fashion_mnist", "train")
    test = bd.get_dataset("fashion_mnist", "test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (10000, 28, 28)
    assert train.labels.dtype == np.int64 and train.labels.shape == (60000,)
    assert train.labels[0] == 9 and train.classes[9] == "Ankle boot"
    assert test.labels[0] == 9  # the first test item is an ankle boot too
    assert train.classes == sources.FASHION_MNIST_CLASSES
    np.testing.assert_array_equal(train.class_counts(), [6000] * 10)
    np.testing.assert_array_equal(test.class_counts(), [1000] * 10)
    im, y = train[0]
    assert im.mode == "RGB" and im.size == (28, 28) and y == 9
    assert train.images.max() == 255 and train.images.min() == 0
    with pytest.raises(ValueError):
        train.images[0, 0, 0] = 1  # shared cached arrays are read-only


@pytest.mark.skipif(not FMNIST_DEBIAN.exists(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_copy_verifies_against_manifest():
    spec = bd.load_manifest().entry("fashion_mnist").file("train-images-idx3-ubyte.gz")
    assert bd.resolve("fashion_mnist", "train-images-idx3-ubyte.gz") == FMNIST_DEBIAN
    assert bd.file_sha256(FMNIST_DEBIAN) in spec.accepted_sha256


# ------------------------------------------------------------------------------------------------------------
# Offline datasets
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist5k", "sklearn_digits", "lfw_subset", "skimage_textures"])
def test_offline_datasets_sizes_and_disjoint_splits(name):
    info = bd.dataset_info(name)
    assert info.offline
    sets = {s: bd.get_dataset(name, s) for s in info.splits}
    for split, ds in sets.items():
        assert len(ds) == info.num_items[split]
        assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == info.image_size
        assert ds.labels.dtype == np.int64 and len(ds.classes) == info.num_classes
        assert set(np.unique(ds.labels)) == set(range(info.num_classes))
    # train and test share no image
    tr = {a.tobytes() for a in sets["train"].images}
    assert not any(a.tobytes() in tr for a in sets["test"].images) or name == "sklearn_digits"
    # deterministic across calls
    np.testing.assert_array_equal(bd.get_dataset(name, "test").labels, sets["test"].labels)


def test_mnist5k_and_digits_details():
    tr, te = bd.get_dataset("mnist5k", "train"), bd.get_dataset("mnist5k", "test")
    np.testing.assert_array_equal(tr.class_counts(), [400] * 10)
    np.testing.assert_array_equal(te.class_counts(), [100] * 10)
    assert tr.classes == [str(i) for i in range(10)]
    d = bd.get_dataset("sklearn_digits", "train")
    assert d.images.max() == 255  # 0-16 scaled to 0-255
    assert set(np.unique(d.images)) <= {int(round(v * 255 / 16)) for v in range(17)}


def test_lfw_subset_faces_first():
    from skimage.data import lfw_subset

    raw = np.asarray(lfw_subset())
    ds = bd.get_dataset("lfw_subset", "train")
    assert ds.classes == ["face", "non-face"]
    # every train image labelled 'face' is one of the first 100 skimage images
    faces = {np.round(a * 255).astype(np.uint8).tobytes() for a in raw[:100]}
    for img, lab in zip(ds.images, ds.labels):
        assert (img.tobytes() in faces) == (lab == 0)


def test_unknown_dataset_and_split():
    with pytest.raises(bd.UnknownDatasetError, match="fashoin_mnist") as ei:
        bd.get_dataset("fashoin_mnist", "train")
    assert "fashion_mnist" in ei.value.close_matches and isinstance(ei.value, ValueError)
    with pytest.raises(bd.UnknownSplitError, match="val.*train, test"):
        bd.get_dataset("mnist5k", "val")


def test_paper_dataset_without_files_raises_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("BOB_DATA_DIR", str(tmp_path))
    for name, split in [("imagenet_r", "test"), ("eurosat", "train")]:
        getattr(sources, {"imagenet_r": "load_imagenet_folder", "eurosat": "load_eurosat"}[name]).cache_clear()
        with pytest.raises(bd.MissingDataError, match=name):
            bd.get_dataset(name, split)


# ------------------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------------------


def test_stratified_subset_balanced_and_deterministic():
    a = bd.get_dataset("mnist5k", "train", max_samples=250, seed=1)
    b = bd.get_dataset("mnist5k", "train", max_samples=250, seed=1)
    c = bd.get_dataset("mnist5k", "train", max_samples=250, seed=2)
    assert len(a) == 250
    counts = a.class_counts()
    assert counts.max() - counts.min() <= 1 and counts.sum() == 250
    np.testing.assert_array_equal(a.source_indices, b.source_indices)
    assert not np.array_equal(a.source_indices, c.source_indices)
    full = bd.get_dataset("mnist5k", "train")
    np.testing.assert_array_equal(a.images, full.images[a.source_indices])
    np.testing.assert_array_equal(a.labels, full.labels[a.source_indices])
    assert a.sampling == "stratified(n=250,seed=1)" and a.cache_key != c.cache_key
    assert len(bd.get_dataset("mnist5k", "train", max_samples=10**6)) == 4000


def test_stratified_indices_with_unequal_classes():
    labels = np.array([0] * 3 + [1] * 50 + [2] * 50)
    idx = bd.stratified_indices(labels, 30, seed=0)
    counts = np.bincount(labels[idx])
    assert counts.tolist()[0] == 3 and counts.sum() == 30 and abs(counts[1] - counts[2]) <= 1
    assert len(set(idx.tolist())) == 30


def test_low_shot():
    ds = bd.get_dataset("mnist5k", "train")
    five = bd.low_shot(ds, per_class=5, seed=0)
    np.testing.assert_array_equal(five.class_counts(), [5] * 10)
    np.testing.assert_array_equal(bd.low_shot(ds, per_class=5, seed=0).source_indices, five.source_indices)
    tiny = bd.low_shot(ds, fraction=0.001, seed=0)  # 0.4 per class rounds to 0: every class keeps one
    np.testing.assert_array_equal(tiny.class_counts(), [1] * 10)
    tenth = bd.low_shot(ds, fraction=0.1, seed=0)
    np.testing.assert_array_equal(tenth.class_counts(), [40] * 10)
    with pytest.raises(ValueError):
        bd.low_shot(ds, fraction=0.1, per_class=3)


# ------------------------------------------------------------------------------------------------------------
# Folder datasets on synthetic layouts (the real files are not on this machine)
# ------------------------------------------------------------------------------------------------------------


def _img(path: Path, size=(40, 30), value=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def test_folder_datasets_on_synthetic_layouts(tmp_path, monkeypatch):
    monkeypatch.setenv("BOB_DATA_DIR", str(tmp_path))
    wnids = sources.imagenet_wnids()
    # ImageNet-R style: two wnid folders -> labels are ImageNet-1k indices
    for w, v in [(wnids[1], 10), (wnids[207], 200)]:
        for k in range(3):
            _img(tmp_path / "imagenet_r" / "imagenet-r" / w / f"{k}.jpg", value=v)
    # EuroSAT style: class folders of 64x64 images
    for c in ("Forest", "River"):
        for k in range(5):
            _img(tmp_path / "eurosat" / "2750" / c / f"{c}_{k}.jpg", size=(64, 64))
    # CIFAR-100 binary, extracted
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    recs = b"".join(bytes([c, f]) + px[i].tobytes() for i, (c, f) in enumerate([(1, 5), (1, 7), (2, 99), (3, 0)]))
    cdir = tmp_path / "cifar100" / "cifar-100-binary"
    cdir.mkdir(parents=True)
    (cdir / "test.bin").write_bytes(recs)
    (cdir / "fine_label_names.txt").write_text("\n".join(f"c{i}" for i in range(100)))
    for fn in (sources.load_imagenet_folder, sources.load_eurosat, sources.load_cifar100):
        fn.cache_clear()
    try:
        r = bd.get_dataset("imagenet_r", "test")
        assert len(r) == 6 and set(r.labels.tolist()) == {1, 207} and len(r.classes) == 1000
        assert r.meta["class_subset"] == [1, 207] and r.meta["class_descriptions"][207]
        im, lab = r[0]
        assert im.size == (256, 256) and lab == 1
        assert r.batch([0, 5]).shape == (2, 256, 256, 3)
        e = bd.get_dataset("eurosat", "train")
        assert len(e) == 8 and e.classes == ["Forest", "River"] and e.image_shape == (64, 64, 3)
        assert len(bd.get_dataset("eurosat", "test")) == 2
        c = bd.get_dataset("cifar100", "test")
        assert c.images.shape == (4, 32, 32, 3) and c.labels.tolist() == [5, 7, 99, 0]
        np.testing.assert_array_equal(c.images[2], px[2].transpose(1, 2, 0))
        assert c.classes[99] == "c99"
    finally:
        for fn in (sources.load_imagenet_folder, sources.load_eurosat, sources.load_cifar100):
            fn.cache_clear()


def test_fgvc_flowers_cub_on_synthetic_layouts(tmp_path, monkeypatch):
    from scipy.io import savemat

    monkeypatch.setenv("BOB_DATA_DIR", str(tmp_path))
    # FGVC-Aircraft: banner of 20 px at the bottom is cropped off before the square resize
    d = tmp_path / "fgvc_aircraft" / "fgvc-aircraft-2013b" / "data"
    d.mkdir(parents=True)
    (d / "variants.txt").write_text("707-320\nA300B4\n")
    (d / "images_variant_test.txt").write_text("0001 A300B4\n0002 707-320\n")
    for iid in ("0001", "0002"):
        a = np.zeros((120, 100, 3), np.uint8)
        a[-20:] = 255  # the banner
        (d / "images").mkdir(exist_ok=True)
        Image.fromarray(a).save(d / "images" / f"{iid}.png")
        (d / "images" / f"{iid}.png").rename(d / "images" / f"{iid}.jpg")
    # Flowers-102
    f = tmp_path / "flowers102"
    for i in range(1, 5):
        _img(f / "jpg" / f"image_{i:05d}.jpg")
    savemat(f / "imagelabels.mat", {"labels": np.array([[3, 1, 102, 3]])})
    savemat(f / "setid.mat", {"trnid": np.array([[2, 1]]), "valid": np.array([[3]]), "tstid": np.array([[4]])})
    # CUB-200-2011
    cub = tmp_path / "cub200_2011" / "CUB_200_2011"
    for rel in ["001.A/a.jpg", "002.B/b.jpg", "002.B/c.jpg"]:
        _img(cub / "images" / rel)
    (cub / "images.txt").write_text("1 001.A/a.jpg\n2 002.B/b.jpg\n3 002.B/c.jpg\n")
    (cub / "image_class_labels.txt").write_text("1 1\n2 2\n3 2\n")
    (cub / "classes.txt").write_text("1 001.A\n2 002.B\n")
    (cub / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n")
    fns = (sources.load_fgvc_aircraft, sources.load_flowers102, sources.load_cub200)
    for fn in fns:
        fn.cache_clear()
    try:
        a = bd.get_dataset("fgvc_aircraft", "test", storage_size=32)
        assert a.labels.tolist() == [1, 0] and a.classes == ["707-320", "A300B4"]
        assert a.batch([0]).max() == 0  # banner gone
        fl = bd.get_dataset("flowers102", "train")
        assert fl.labels.tolist() == [2, 0] and len(fl.classes) == 102
        assert bd.get_dataset("flowers102", "test").labels.tolist() == [2]
        cb = bd.get_dataset("cub200_2011", "train")
        assert cb.labels.tolist() == [0, 1] and cb.classes == ["001.A", "002.B"]
    finally:
        for fn in fns:
            fn.cache_clear()


# ------------------------------------------------------------------------------------------------------------
# Transforms
# ------------------------------------------------------------------------------------------------------------

CFG = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3), "interpolation": "bicubic", "input_size": (3, 48, 48)}


@pytest.mark.parametrize("shape", [(4, 28, 28), (4, 20, 30, 3)])
def test_to_tensor_batch_constant_image(shape):
    import torch

    from bobkit.data.transforms import to_tensor_batch

    v = 200
    x = to_tensor_batch(np.full(shape, v, np.uint8), CFG, 64)
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    expected = (v / 255 - np.array(CFG["mean"])) / np.array(CFG["std"])
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3)).numpy(), 0, atol=1e-5)
    assert to_tensor_batch(np.full(shape, v, np.uint8), CFG).shape[-2:] == (48, 48)  # config's input_size


def test_build_transform_matches_batch_path():
    from bobkit.data.transforms import build_transform, to_tensor_batch

    ds = bd.get_dataset("mnist5k", "test", max_samples=8)
    tf = build_transform(CFG, 56)
    pil = np.stack([tf(ds[i][0]).numpy() for i in range(len(ds))])
    fast = to_tensor_batch(ds.images, CFG, 56).numpy()
    assert pil.shape == fast.shape == (8, 3, 56, 56)
    # same normalisation and geometry; only the resampling kernels (PIL vs torch) differ slightly
    assert np.abs(pil - fast).mean() < 0.05
    v = 100
    const = tf(Image.fromarray(np.full((10, 10), v, np.uint8)))
    np.testing.assert_allclose(const.mean(dim=(1, 2)).numpy(),
                               (v / 255 - np.array(CFG["mean"])) / np.array(CFG["std"]), atol=1e-5)


def test_build_transform_train_is_random_but_shaped():
    import torch

    from bobkit.data.transforms import build_transform

    tf = build_transform(CFG, 32, train=True, hflip=True)
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    torch.manual_seed(0)
    a, b = tf(im), tf(im)
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)


# ------------------------------------------------------------------------------------------------------------
# Revisited Oxford/Paris ground truth (moved here with the code from bobkit.eval.metrics)
# ------------------------------------------------------------------------------------------------------------


def _write_gnd_pickle(path, payload) -> str:
    data = pickle.dumps(payload, protocol=4)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_gnd_pickle_converted_once_with_numpy_arrays(tmp_path):
    payload = {
        "imlist": ["a", "b", "c"],
        "qimlist": ["q"],
        "gnd": [{"easy": np.array([0]), "hard": np.array([2], dtype=np.int32), "junk": [], "bbx": [1.0, 2, 3, 4]}],
    }
    sha = _write_gnd_pickle(tmp_path / "gnd.pkl", payload)
    out = rv.convert_revisited_gnd(tmp_path / "gnd.pkl", tmp_path / "gnd.json", sha256=sha)
    gt = rv.load_revisited_gnd(out)
    assert gt.gnd[0]["easy"] == [0] and gt.gnd[0]["hard"] == [2] and gt.source_sha256 == sha
    # second call reads nothing new (the JSON is kept as is)
    mtime = out.stat().st_mtime_ns
    rv.convert_revisited_gnd(tmp_path / "gnd.pkl", tmp_path / "gnd.json", sha256=sha)
    assert out.stat().st_mtime_ns == mtime


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_gnd_pickle_with_code_is_refused(tmp_path):
    sha = _write_gnd_pickle(tmp_path / "gnd.pkl", {"imlist": [], "qimlist": [], "gnd": [_Evil()]})
    with pytest.raises(rv.UnsafePickleError, match="system"):
        rv.convert_revisited_gnd(tmp_path / "gnd.pkl", tmp_path / "gnd.json", sha256=sha)
    assert not (tmp_path / "gnd.json").exists()


def test_gnd_pickle_checksum_verified_before_unpickling(tmp_path):
    _write_gnd_pickle(tmp_path / "gnd.pkl", {"imlist": [], "qimlist": [], "gnd": []})
    with pytest.raises(bd.ChecksumError, match="sha256"):
        rv.convert_revisited_gnd(tmp_path / "gnd.pkl", tmp_path / "gnd.json", sha256="0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        rv.convert_revisited_gnd(tmp_path / "gnd.pkl", tmp_path / "gnd.json", sha256=[])
    assert not (tmp_path / "gnd.json").exists()


def test_gnd_json_indices_validated(tmp_path):
    bad = {"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [5], "hard": [], "junk": []}]}
    (tmp_path / "g.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="outside"):
        rv.load_revisited_gnd(tmp_path / "g.json")


def test_gnd_without_published_hash_is_refused_until_pinned(tmp_path, monkeypatch):
    """The manifest records no sha256 for the real gnd pickles: the file is refused (hash and pin command in the
    message), nothing is unpickled, and after `bob data --pin` (bd.pin) the same file loads."""
    payload = {"imlist": ["a", "b"], "qimlist": ["q"], "gnd": [{"easy": [1], "hard": [], "junk": [0]}]}
    pkl = tmp_path / "gnd_roxford5k.pkl"
    sha = _write_gnd_pickle(pkl, payload)
    assert bd.load_manifest().entry("roxford5k").file("gnd_roxford5k.pkl").sha256 is None
    unpickled = []
    monkeypatch.setenv("BOB_CACHE_DIR", str(tmp_path / "cache"))
    with monkeypatch.context() as patched, pytest.raises(bd.UnverifiedFileError) as info:
        patched.setattr(rv, "restricted_unpickle", lambda *a, **k: unpickled.append(1))
        rv.revisited_ground_truth("roxford5k", pkl)
    assert sha in str(info.value) and "bob data --pin roxford5k" in str(info.value) and not unpickled
    record = bd.pin("roxford5k", pkl)
    assert record["sha256"] == sha and bd.pins()["roxford5k"]["roxford5k/gnd_roxford5k.pkl"]["sha256"] == sha
    assert (tmp_path / "cache" / "data" / "pinned_hashes.json").stat().st_mode & 0o777 == 0o600
    gt = rv.revisited_ground_truth("roxford5k", pkl)
    assert gt.gnd[0]["junk"] == [0] and gt.source_sha256 == sha
    # a different file under the same name no longer matches the pin
    _write_gnd_pickle(pkl, {**payload, "qimlist": ["other"]})
    with pytest.raises(bd.ChecksumError, match=sha):
        rv.revisited_ground_truth("roxford5k", pkl)


def test_required_verification_refuses_unhashed_file_until_pinned(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    f = data_dir / "w.bin"
    f.write_bytes(b"weights")
    m = _write_manifest(tmp_path / "m.yaml", [_table_entry("w", "w.bin", None)])
    monkeypatch.setenv("BOB_DATA_DIR", str(data_dir))
    assert m.resolve("w") == f  # plain data without a hash: returned, as before
    with pytest.raises(bd.UnverifiedFileError, match=_sha256(b"weights")):
        m.resolve("w", required=True)
    with pytest.raises(FileNotFoundError):
        bd.pin("w", data_dir / "absent.bin", manifest=m)
    assert bd.pin("w", f, manifest=m)["size_bytes"] == 7
    assert m.resolve("w", required=True) == f
    assert bd.status(verify=True, manifest=m).set_index("name").loc["w", "verified"] == "yes"
    f.write_bytes(b"other!!")
    with pytest.raises(bd.ChecksumError):
        m.resolve("w", required=True)


def test_pin_refuses_a_file_that_contradicts_a_published_hash(tmp_path):
    f = tmp_path / "t.csv"
    f.write_bytes(b"a,b\n")
    m = _write_manifest(tmp_path / "m.yaml", [_table_entry("t", "t.csv", "0" * 64)])
    with pytest.raises(bd.ChecksumError, match="0" * 64):
        bd.pin("t", f, manifest=m)
    assert bd.pins() == {}


def test_bob_data_pin_command(tmp_path, monkeypatch, capsys):
    from bobkit.cli import main

    f = tmp_path / "gnd_rparis6k.pkl"
    f.write_bytes(pickle.dumps({"imlist": [], "qimlist": [], "gnd": []}))
    monkeypatch.setattr("bobkit.data.inventory.status", lambda **kw: __import__("pandas").DataFrame())
    main(["data", "--pin", "rparis6k", str(f)])
    assert _sha256(f.read_bytes()) in capsys.readouterr().out
    assert bd.pins()["rparis6k"]["rparis6k/gnd_rparis6k.pkl"]["sha256"] == _sha256(f.read_bytes())


def test_status_can_be_called_twice():
    """The function is not shadowed by a submodule of the same name once it has run."""
    first, second = bd.status(), bd.status()
    assert callable(bd.status) and list(first["name"]) == list(second["name"])
