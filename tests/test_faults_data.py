"""Fault injections for downloads, checkpoints, pickles, the hash memo and the caches (each failed before the fix).

| fault | before | after |
|---|---|---|
| truncated / zero-filled ``features.npy`` | every later cell fails / zeros served silently | moved aside, recomputed |
| truncated / zero-filled converted weights | timm load fails forever / garbage weights | moved aside, reconverted |
| truncated / zero-filled scene ``images.npz`` | every detection cell fails | moved aside, recomposed |
| tampered checkpoint (URL backbone) | converted and loaded, no hash anywhere | refused before unpickling |
| checkpoint swapped between check and load | the swapped file is loaded | the verified (open) file is loaded |
| hostile ground-truth pickle (huge array, depth, laughs) | allocates / recurses without bound | capped, clear error |
| ``os.utime``-forged file under the hash memo | stale "verified" hash served | re-hashed, mismatch reported |
| disk full during a download | reported as a network error | :class:`DiskFullError` naming the folder |
| download larger than declared | read to the end, then a checksum error | reading stops at the declared size |
| torch < 2.6 | ``weights_only=True`` trusted | checkpoint refused |
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import os
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import bobkit.backbones as B  # noqa: E402
import bobkit.data as bd  # noqa: E402
from bobkit.backbones import weights as W  # noqa: E402
from bobkit.data import (
    fetch,  # noqa: E402
    scenes,  # noqa: E402
)
from bobkit.data import revisited as rv  # noqa: E402
from bobkit.data import verify as dv  # noqa: E402
from bobkit.features import extract  # noqa: E402

torch.set_num_threads(2)

RANDOM_BACKBONE = "resnet18.random_init"
PACKAGED = "mobilenetv2_100.packaged_tv_in1k"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Every test gets its own bobkit cache (features, converted weights, scenes, hash memo, pins)."""
    monkeypatch.setenv("BOB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BOB_DATA_DIR", raising=False)
    monkeypatch.delenv("BOB_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv(dv.PIN_ENV, raising=False)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zero_fill(path: Path, keep: int = 0) -> None:
    """Zeros over the file after its first ``keep`` bytes, same size (what a crash without fsync can leave)."""
    data = path.read_bytes()
    path.write_bytes(data[:keep] + bytes(len(data) - keep))


def _npy_header_size(path: Path) -> int:
    return int(np.load(path, mmap_mode="r").offset)


# ----------------------------------------------------------------------------------------------------------------
# Cache entries
# ----------------------------------------------------------------------------------------------------------------

FEATURES = dict(image_size=32, max_samples=20, batch_size=10)


@pytest.mark.parametrize("damage", ["truncate", "zero_fill_data", "zero_fill_all", "delete_labels"])
def test_damaged_feature_entry_is_moved_aside_and_recomputed(damage, tmp_path):
    fresh = extract.extract_features(RANDOM_BACKBONE, "fashion_mnist", "test", **FEATURES)
    entry = Path(os.environ["BOB_CACHE_DIR"]) / "features" / fresh.key
    target = entry / "features.npy"
    if damage == "truncate":
        _truncate(target)
    elif damage == "zero_fill_data":  # the header survives: the old cache served these zeros as features
        _zero_fill(target, keep=_npy_header_size(target))
    elif damage == "zero_fill_all":
        _zero_fill(target)
    else:
        (entry / "labels.npy").unlink()
    assert not extract.is_cached(RANDOM_BACKBONE, "fashion_mnist", "test", image_size=32, max_samples=20)
    with pytest.warns(UserWarning, match="damaged"):
        again = extract.extract_features(RANDOM_BACKBONE, "fashion_mnist", "test", **FEATURES)
    assert not again.cache_hit
    np.testing.assert_array_equal(np.asarray(again.features), np.asarray(fresh.features))
    np.testing.assert_array_equal(again.labels, fresh.labels)
    assert [p.name.split(".bad-")[0] for p in entry.parent.glob(f"{entry.name}.bad-*")] == [entry.name]
    hit = extract.extract_features(RANDOM_BACKBONE, "fashion_mnist", "test", **FEATURES)
    assert hit.cache_hit and np.abs(np.asarray(hit.features)).sum() > 0


def test_feature_entry_records_sizes_hashes_and_shapes():
    fs = extract.extract_features(RANDOM_BACKBONE, "fashion_mnist", "test", **FEATURES)
    import json

    meta = json.loads((Path(os.environ["BOB_CACHE_DIR"]) / "features" / fs.key / "meta.json").read_text())
    path = Path(os.environ["BOB_CACHE_DIR"]) / "features" / fs.key / "features.npy"
    assert meta["files"]["features.npy"] == {"size": path.stat().st_size,
                                             "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert meta["arrays"]["features.npy"]["shape"] == list(fs.features.shape)


def _converted_file() -> Path:
    (path,) = sorted((Path(os.environ["BOB_CACHE_DIR"]) / "weights").glob(f"{PACKAGED}-*.safetensors"))
    return path


@pytest.mark.parametrize("damage", [_truncate, _zero_fill], ids=["truncate", "zero_fill"])
def test_damaged_converted_weights_are_reconverted(damage):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        reference = B.create_model(PACKAGED)(x)
    converted = _converted_file()
    damage(converted)
    with torch.no_grad():
        again = B.create_model(PACKAGED)(x)
    torch.testing.assert_close(again, reference)
    assert _converted_file() == converted and len(list(converted.parent.glob("*.bad-*"))) >= 1


def test_damaged_scene_split_is_recomposed(tmp_path):
    config = scenes.SceneConfig(canvas_size=64, min_item_size=14, max_item_size=28)
    first = scenes.build_scene_split("fmnist_scenes", "val", 4, config, seed=0, cache_root=tmp_path / "sc")
    reference = scenes.CocoDataset(first / "instances.json", first).load_image(0)
    for damage in (_truncate, _zero_fill):
        damage(first / "images.npz")
        with pytest.warns(UserWarning, match="damaged"):
            again = scenes.build_scene_split("fmnist_scenes", "val", 4, config, seed=0, cache_root=tmp_path / "sc")
        assert again == first
        np.testing.assert_array_equal(scenes.CocoDataset(again / "instances.json", again).load_image(0), reference)
    assert len(list((tmp_path / "sc").glob("*.bad-*"))) == 2


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------

DINO = "resnet50.dino"
DINO_ENTRY = "weights_resnet50_dino"


def _tiny_checkpoint(path: Path, value: float = 1.0) -> Path:
    torch.save({"state_dict": {"module.conv1.weight": torch.full((2, 2), value)}}, path)
    return path


def test_tampered_checkpoint_is_refused_before_unpickling(tmp_path, monkeypatch):
    monkeypatch.setenv("BOB_WEIGHTS_DIR", str(tmp_path))
    checkpoint = _tiny_checkpoint(tmp_path / f"{DINO}.pth")
    bd.pin(DINO_ENTRY, checkpoint)
    loads = []
    monkeypatch.setattr(W, "load_checkpoint", lambda *a, **k: loads.append(a) or {})
    data = bytearray(checkpoint.read_bytes())
    data[-20] ^= 0xFF  # one flipped byte, same size
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(B.WeightsVerificationError, match="sha256") as info:
        B.create_model(DINO)
    assert hashlib.sha256(bytes(data)).hexdigest() in str(info.value)
    assert loads == []  # nothing was unpickled from the tampered file


def test_checkpoint_is_read_from_the_verified_open_file(tmp_path, monkeypatch):
    """Swap the file at the path right after its hash is checked: the bytes that were checked are the ones read."""
    monkeypatch.setenv("BOB_WEIGHTS_DIR", str(tmp_path))
    checkpoint = _tiny_checkpoint(tmp_path / f"{DINO}.pth", value=1.0)
    bd.pin(DINO_ENTRY, checkpoint)
    evil = _tiny_checkpoint(tmp_path / "evil.pth", value=666.0)
    real_check = dv.check_digest

    def check_then_swap(*args, **kwargs):
        verdict = real_check(*args, **kwargs)
        os.replace(evil, checkpoint)  # an attacker (or a concurrent download) replaces the file now
        return verdict

    read = []
    monkeypatch.setattr(dv, "check_digest", check_then_swap)
    monkeypatch.setattr(W, "load_checkpoint", lambda handle: read.append(torch.load(handle, weights_only=True)) or {})
    with pytest.raises(W.WeightsConversionError):  # the tiny state dict does not fit a ResNet-50: expected
        B.create_model(DINO)
    assert float(read[0]["state_dict"]["module.conv1.weight"][0, 0]) == 1.0


def test_url_checkpoint_without_hash_or_pin_is_refused_and_pin_env_pins(tmp_path, monkeypatch):
    monkeypatch.setenv("BOB_WEIGHTS_DIR", str(tmp_path))
    checkpoint = _tiny_checkpoint(tmp_path / f"{DINO}.pth")
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    with pytest.raises(B.WeightsVerificationError, match=f"bob data --pin {DINO_ENTRY}") as info:
        B.create_model(DINO)
    assert digest in str(info.value) and not B.is_available_offline(DINO)
    monkeypatch.setenv(dv.PIN_ENV, "1")
    with pytest.warns(UserWarning, match="pinning"), pytest.raises(W.WeightsConversionError, match="missing"):
        B.create_model(DINO)  # verified by the new pin; then the tiny file does not fit ResNet-50
    assert bd.pins()[DINO_ENTRY]["weights/dino/dino_resnet50_pretrain.pth"]["sha256"] == digest


def test_torch_older_than_2_6_is_refused(tmp_path, monkeypatch):
    checkpoint = _tiny_checkpoint(tmp_path / "x.pth")
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    with pytest.raises(W.WeightsVerificationError, match="2.6"):
        W.load_checkpoint(checkpoint)


# ----------------------------------------------------------------------------------------------------------------
# Hostile ground-truth pickles
# ----------------------------------------------------------------------------------------------------------------


def _huge_array_pickle(n: int) -> bytes:
    """A protocol-2 pickle calling numpy's ``_reconstruct(ndarray, (n,), 'b')``: allocates n bytes if obeyed."""
    def glob(module: str, name: str) -> bytes:
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    return (b"\x80\x02" + glob("numpy._core.multiarray", "_reconstruct") + glob("numpy", "ndarray")
            + b"J" + n.to_bytes(4, "little", signed=True) + b"\x85" + b"U\x01b" + b"\x87R.")


def test_pickle_declaring_a_huge_array_is_refused_before_allocating():
    with pytest.raises(rv.PickleLimitError, match="max_array_bytes"):
        rv.restricted_unpickle(_huge_array_pickle(2_000_000_000))
    assert rv.restricted_unpickle(_huge_array_pickle(16)).shape == (16,)  # a small one is fine


def test_deeply_nested_pickle_is_refused(tmp_path):
    nested: list = []
    for _ in range(200):
        nested = [nested]
    data = pickle.dumps({"imlist": [], "qimlist": ["q"], "gnd": [{"easy": nested}]}, protocol=4)
    (tmp_path / "gnd.pkl").write_bytes(data)
    with pytest.raises(rv.PickleLimitError, match="max_depth"):
        rv.convert_revisited_gnd(tmp_path / "gnd.pkl", tmp_path / "gnd.json",
                                 sha256=hashlib.sha256(data).hexdigest())


def test_shared_reference_bomb_is_capped(tmp_path):
    """1,000 references to 1,000 references to ... a 1,000-element list: a 20 kB file, 10^12 elements when expanded."""
    level: list = list(range(1000))
    for _ in range(3):
        level = [level] * 1000
    data = pickle.dumps({"imlist": [], "qimlist": ["q"], "gnd": [{"easy": level}]}, protocol=4)
    assert len(data) < 50_000
    (tmp_path / "gnd.pkl").write_bytes(data)
    start = time.monotonic()
    with pytest.raises(rv.PickleLimitError, match="max_items"):
        rv.convert_revisited_gnd(tmp_path / "gnd.pkl", tmp_path / "gnd.json",
                                 sha256=hashlib.sha256(data).hexdigest())
    assert time.monotonic() - start < 30


def test_oversized_pickle_file_is_refused_unread(tmp_path):
    data = pickle.dumps({"imlist": ["x" * 100] * 10, "qimlist": [], "gnd": []}, protocol=4)
    (tmp_path / "gnd.pkl").write_bytes(data)
    with pytest.raises(rv.PickleLimitError, match="max_file_bytes"):
        rv.convert_revisited_gnd(tmp_path / "gnd.pkl", tmp_path / "gnd.json", sha256=hashlib.sha256(data).hexdigest(),
                                 limits=rv.PickleLimits(max_file_bytes=100))


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("numpy", "load"), ("subprocess", "Popen")])
def test_pickle_with_disallowed_global_is_refused(module, name):
    data = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n" + b"U\x011\x85R."
    with pytest.raises(rv.UnsafePickleError, match=f"{module}.{name}"):
        rv.restricted_unpickle(data)


# ----------------------------------------------------------------------------------------------------------------
# The hash memo
# ----------------------------------------------------------------------------------------------------------------


def _manifest(tmp_path: Path, sha256: str, url: str = "https://example.org/x.bin", size: int | None = None):
    entry = dict(name="x", kind="reference_table", tasks=["analysis"], description="test", url=url, licence="CC0",
                 layout="x.bin", download="direct", filename="x.bin", sha256=sha256, size_bytes=size)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"version": 1, "entries": [entry]}))
    return bd.load_manifest(tmp_path / "m.yaml")


def test_forged_mtime_does_not_fool_the_hash_memo(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    good = data_dir / "x.bin"
    good.write_bytes(b"genuine content")
    m = _manifest(tmp_path, hashlib.sha256(b"genuine content").hexdigest())
    monkeypatch.setenv("BOB_DATA_DIR", str(data_dir))
    assert m.resolve("x") == good  # hashed and memoised
    before = good.stat()
    time.sleep(0.05)  # let the coarse file-system clock tick
    with open(good, "r+b") as fh:  # same inode, same size, different bytes
        fh.write(b"TAMPERED")
    os.utime(good, ns=(before.st_atime_ns, before.st_mtime_ns))  # forge the modification time back
    assert good.stat().st_mtime_ns == before.st_mtime_ns and good.stat().st_size == before.st_size
    with pytest.raises(bd.ChecksumError):
        m.resolve("x")


def test_hash_memo_is_private_and_a_shared_one_is_ignored(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "x.bin").write_bytes(b"content")
    m = _manifest(tmp_path, hashlib.sha256(b"content").hexdigest())
    monkeypatch.setenv("BOB_DATA_DIR", str(data_dir))
    m.resolve("x")
    memo = Path(os.environ["BOB_CACHE_DIR"]) / "data" / dv.MEMO_FILE
    assert memo.stat().st_mode & 0o777 == 0o600
    os.chmod(memo, 0o666)  # anyone could now write "verified" hashes into it
    with pytest.warns(UserWarning, match="not private"):
        assert dv._read_private_json(memo) == {}


# ----------------------------------------------------------------------------------------------------------------
# Downloads
# ----------------------------------------------------------------------------------------------------------------


class _Server:
    """A local HTTP server on 127.0.0.1 sending ``size`` bytes, with or without a Content-Length header."""

    def __init__(self, size: int, content_length: bool) -> None:
        body = bytes(range(256)) * (size // 256 + 1)
        body = body[:size]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self.send_response(200)
                if content_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for i in range(0, len(body), 1 << 16):
                        self.wfile.write(body[i:i + (1 << 16)])
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args) -> None:
                pass

        self.body = body
        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/file.bin"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("content_length", [True, False], ids=["announced", "unannounced"])
def test_download_larger_than_declared_stops_at_the_declared_size(tmp_path, monkeypatch, content_length):
    declared = 10_000
    with _Server(8 << 20, content_length) as server:
        m = _manifest(tmp_path, hashlib.sha256(server.body[:declared]).hexdigest(), url=server.url, size=declared)
        read = []
        real_urlopen = fetch.urllib.request.urlopen

        def counting_urlopen(*args, **kwargs):
            resp = real_urlopen(*args, **kwargs)
            real_read = resp.read
            resp.read = lambda n=-1: read.append(len(chunk := real_read(n))) or chunk
            return resp

        monkeypatch.setattr(fetch.urllib.request, "urlopen", counting_urlopen)
        with pytest.raises(bd.DownloadSizeError, match=str(declared)):
            m.download("x", dest_dir=tmp_path / "dl")
    assert sum(read) <= declared + 1  # stopped reading one byte past the declared size
    assert not (tmp_path / "dl").exists() or not list((tmp_path / "dl").iterdir())


def test_download_shorter_than_declared_is_refused(tmp_path):
    with _Server(5_000, content_length=True) as server:
        m = _manifest(tmp_path, hashlib.sha256(server.body).hexdigest(), url=server.url, size=6_000)
        with pytest.raises(bd.DownloadSizeError, match="5000 bytes"):
            m.download("x", dest_dir=tmp_path / "dl")


def test_full_disk_during_download_is_reported_as_disk_full(tmp_path, monkeypatch):
    payload = b"x" * 300_000
    upstream = tmp_path / "upstream.bin"
    upstream.write_bytes(payload)
    m = _manifest(tmp_path, hashlib.sha256(payload).hexdigest(), url=upstream.as_uri(), size=len(payload))
    real_open = open

    class FullDisk:
        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, chunk):
            if self.written + len(chunk) > 100_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(chunk)
            return self.handle.write(chunk)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(fetch, "open", lambda path, mode="r", *a, **k: FullDisk(real_open(path, mode, *a, **k)),
                        raising=False)
    with pytest.raises(bd.DiskFullError, match="disk full") as info:
        m.download("x", dest_dir=tmp_path / "dl")
    assert not isinstance(info.value, bd.DownloadError) and str(tmp_path / "dl") in str(info.value)
    assert not list((tmp_path / "dl").rglob("*"))  # nothing half-written left behind
