"""Stand-ins of the paper's retrieval datasets beyond CUB and revisited Oxford / Paris, each in its published layout.

iNaturalist 2021's ``val/<NNNNN_Kingdom_..._species>/<uuid>.jpg`` class folders; ObjectNet's PNG class folders and
its ``mappings/`` files (in ImageNet 2012 id order, which differs from the sorted-wnid order the loaders use);
INSTRE-S1's object folders; Google Landmarks v2's three-level id-sharded ``index/`` and ``test/`` folders with the
v2.1 retrieval solution (including test images without a landmark); Copydays' originals, strong attacks, JPEG
qualities and crops, the copies made from the originals. The layouts are cited in ``data_manifest.yaml``
(``layout_source``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from bobkit.data.sources import COPYDAYS_BLOCKS, imagenet_descriptions
from bobkit.rehearsal.images import picture, write_picture

#: Class folders of the iNaturalist 2021 stand-in (real names: 5-digit id, then the taxonomy).
INAT_CLASSES = ("00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris",
                "09999_Plantae_Tracheophyta_Pinopsida_Pinales_Pinaceae_Tsuga_mertensiana")
#: ObjectNet stand-in: folder -> (ObjectNet label, its ImageNet-1k indices in the sorted-wnid order); the third
#: class has no ImageNet counterpart, as 200 of the 313 do not.
OBJECTNET_CLASSES = {"alarm_clock": ("Alarm clock", (409, 530)), "banana": ("Banana", (954,)),
                     "air_freshener": ("Air freshener", ())}
INSTRE_CLASSES = ("01a_canada_book", "02b_coca_cola")
#: Google Landmarks v2 stand-in: test id -> index ids of its landmark ("None": a test image without one).
GLDV2_SOLUTION = {"0a1b2c3d4e5f6071": ("1f2e3d4c5b6a7980", "1f9e8d7c6b5a4930"),
                  "0b2c3d4e5f607182": ("2a3b4c5d6e7f8091",),
                  "0c3d4e5f60718293": ()}
GLDV2_DISTRACTORS = ("3b4c5d6e7f8091a2", "3c5d6e7f8091a2b3")
COPYDAYS_ORIGINALS = ("200000", "200100")


def _folder_pictures(folder: Path, rng: np.random.Generator, names: list[str], size: tuple[int, int]) -> None:
    for name in names:
        write_picture(folder / name, rng, size)


def write_inat2021_val(root: Path, rng: np.random.Generator) -> None:
    """``inaturalist/{val/<class>/<uuid>.jpg, val.json}``: six pictures per class (the real set has ten), so the
    paper's cap of five leaves one query and four database items per class."""
    base = root / "inaturalist"
    for cls in INAT_CLASSES:
        names = [f"{rng.bytes(16).hex()}.jpg" for _ in range(6)]
        _folder_pictures(base / "val" / cls, rng, names, (80, 60))
    (base / "val.json").write_text(json.dumps({"categories": [{"id": int(c[:5]), "image_dir_name": c}
                                                              for c in INAT_CLASSES]}))


def write_objectnet(root: Path, rng: np.random.Generator) -> None:
    """``objectnet/objectnet-1.0/{images/<folder>/<hash>.png, mappings/...}``; ``imagenet_to_label_2012_v2`` lists
    the ImageNet labels by 2012 id, here the reverse of the sorted-wnid order, which
    ``pytorch_to_imagenet_2012_id.json`` undoes."""
    base = root / "objectnet" / "objectnet-1.0"
    for folder in OBJECTNET_CLASSES:
        _folder_pictures(base / "images" / folder, rng, [f"{rng.bytes(8).hex()}.png" for _ in range(5)], (64, 64))
    names = imagenet_descriptions()
    mappings = base / "mappings"
    mappings.mkdir(parents=True)
    (mappings / "folder_to_objectnet_label.json").write_text(
        json.dumps({folder: label for folder, (label, _) in OBJECTNET_CLASSES.items()}, indent=1))
    (mappings / "objectnet_to_imagenet_1k.json").write_text(json.dumps(
        {label: "; ".join(names[i] for i in indices) for label, indices in OBJECTNET_CLASSES.values() if indices},
        indent=1))
    (mappings / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(i): 999 - i for i in range(1000)}))
    (mappings / "imagenet_to_label_2012_v2").write_text("\n".join(reversed(names)) + "\n")


def write_instre(root: Path, rng: np.random.Generator) -> None:
    """``instre/INSTRE-S1/<object>/<NNN>.jpg`` with a bounding-box ``<NNN>.txt`` beside each picture."""
    for cls in INSTRE_CLASSES:
        folder = root / "instre" / "INSTRE-S1" / cls
        for k in range(1, 6):
            write_picture(folder / f"{k:03d}.jpg", rng, (96, 72))
            (folder / f"{k:03d}.txt").write_text("10 8 60 50\n")


def _gldv2_picture(folder: Path, image_id: str, rng: np.random.Generator) -> None:
    write_picture(folder / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg", rng, (80, 64))


def write_gldv2(root: Path, rng: np.random.Generator) -> None:
    """``gldv2/{index,test}/<a>/<b>/<c>/<id>.jpg`` and ``retrieval_solution_v2.1.csv`` (``id,images,Usage``:
    space-separated index ids, ``None`` for a test image without a landmark)."""
    base = root / "gldv2"
    index_ids = sorted({i for ids in GLDV2_SOLUTION.values() for i in ids} | set(GLDV2_DISTRACTORS))
    for image_id in index_ids:
        _gldv2_picture(base / "index", image_id, rng)
    rows = ["id,images,Usage"]
    for k, (test_id, ids) in enumerate(GLDV2_SOLUTION.items()):
        _gldv2_picture(base / "test", test_id, rng)
        rows.append(f"{test_id},{' '.join(ids) or 'None'},{('Public', 'Private')[k % 2] if ids else 'Ignored'}")
    (base / "retrieval_solution_v2.1.csv").write_text("\n".join(rows) + "\n")


def _jpeg(image: Image.Image, path: Path, quality: int = 85) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=quality)


def write_copydays(root: Path, rng: np.random.Generator) -> None:
    """``copydays/{original, strong, jpegqual/<q>, crops/<c>}/*.jpg``: the JPEG and crop copies keep their
    original's file name, the strong attacks number on from it (``200001.jpg``, ``200002.jpg``)."""
    base = root / "copydays"
    for stem in COPYDAYS_ORIGINALS:
        original = Image.fromarray(picture(rng, 96, 72))
        _jpeg(original, base / "original" / f"{stem}.jpg")
        for block in COPYDAYS_BLOCKS["jpegqual"]:
            _jpeg(original, base / block / f"{stem}.jpg", quality=int(block.split("/")[1]))
        for block in COPYDAYS_BLOCKS["crops"]:
            keep = 1.0 - int(block.split("/")[1]) / 100.0  # "crops/20": 20% of the surface cut away
            w, h = (max(8, round(side * keep ** 0.5)) for side in original.size)
            left, top = (original.width - w) // 2, (original.height - h) // 2
            _jpeg(original.crop((left, top, left + w, top + h)), base / block / f"{stem}.jpg")
        attacks = (original.transpose(Image.Transpose.FLIP_LEFT_RIGHT), original.rotate(10).convert("L"))
        for k, attacked in enumerate(attacks[: 2 if stem == COPYDAYS_ORIGINALS[0] else 1], start=1):
            buffer = io.BytesIO()
            attacked.save(buffer, format="JPEG", quality=30)
            (base / "strong").mkdir(parents=True, exist_ok=True)
            (base / "strong" / f"{stem[:4]}{k:02d}.jpg").write_bytes(buffer.getvalue())
