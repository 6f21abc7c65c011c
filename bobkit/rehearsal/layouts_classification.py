"""Stand-ins of the paper's classification and retrieval datasets, each in its published on-disk layout.

CIFAR-100 as its binary release (records of ``<coarse><fine><3072 pixels>``, read without unpickling), Flowers-102
with MATLAB v5 ``.mat`` labels and splits, FGVC-Aircraft's text lists (variant names with spaces and slashes) and
copyright banner, EuroSAT's class folders, CUB-200-2011's id tables, CheXpert's CSV with uncertain (-1) and blank
labels, VisDA-2017's class folders and image lists. The layouts are cited in ``data_manifest.yaml``
(``layout_source``).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

from bobkit.rehearsal.images import banner, picture, write_picture

CIFAR100_FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
CIFAR100_COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2"
).split()
EUROSAT_CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake")
#: Real FGVC-Aircraft variant names with the characters that trip parsers (spaces, slashes, dots).
FGVC_VARIANTS = ("707-320", "A300B4", "F/A-18", "Cessna 172", "Falcon 2000", "Model B200", "DC-10", "Il-76")
CHEXPERT_OBSERVATIONS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                         "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                         "Pleural Other", "Fracture", "Support Devices")
VISDA_CLASSES = ("aeroplane", "bicycle", "bus", "car", "horse", "knife", "motorcycle", "person", "plant",
                 "skateboard", "train", "truck")


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _cifar_records(rng: np.random.Generator, fine: list[int]) -> bytes:
    """Binary-release records: coarse label byte, fine label byte, 1024 red, 1024 green, 1024 blue bytes."""
    rows = []
    for label in fine:
        pixels = picture(rng, 32, 32).transpose(2, 0, 1).reshape(-1)  # channel-major, row-major per channel
        rows.append(np.concatenate([[label % 20, label], pixels]).astype(np.uint8))
    return np.stack(rows).tobytes()


def write_cifar100(root: Path, rng: np.random.Generator) -> None:
    """``cifar100/cifar-100-binary.tar.gz`` holding ``cifar-100-binary/{train,test}.bin`` and the label names,
    read in place (verified against the manifest's sha256, here the rehearsal's overlay)."""
    members = {
        "cifar-100-binary/train.bin": _cifar_records(rng, [0, 0, 0, 1, 1, 1, 99, 99, 99]),
        "cifar-100-binary/test.bin": _cifar_records(rng, [0, 1, 99, 99]),
        "cifar-100-binary/fine_label_names.txt": ("\n".join(CIFAR100_FINE) + "\n").encode(),
        "cifar-100-binary/coarse_label_names.txt": ("\n".join(CIFAR100_COARSE) + "\n").encode(),
    }
    path = root / "cifar100" / "cifar-100-binary.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_flowers102(root: Path, rng: np.random.Generator) -> None:
    """``flowers102/{jpg/image_%05d.jpg, imagelabels.mat, setid.mat}``: MATLAB v5 files of 1 x N doubles
    (``labels`` 1..102; ``trnid`` / ``valid`` / ``tstid`` 1-based image numbers)."""
    from scipy.io import savemat

    base = root / "flowers102"
    labels = [1, 1, 1, 1, 2, 2, 2, 2, 102, 102, 102, 102]  # 12 pictures, 4 per class
    for number in range(1, len(labels) + 1):
        write_picture(base / "jpg" / f"image_{number:05d}.jpg", rng, (100, 84))
    savemat(base / "imagelabels.mat", {"labels": np.asarray([labels], dtype=np.float64)}, format="5")
    ids = np.arange(1, len(labels) + 1).reshape(-1, 4)  # per class: train, train, val, test
    savemat(base / "setid.mat", {"trnid": ids[:, :2].reshape(1, -1).astype(np.float64),
                                 "valid": ids[:, 2:3].reshape(1, -1).astype(np.float64),
                                 "tstid": ids[:, 3:].reshape(1, -1).astype(np.float64)}, format="5")


def write_fgvc_aircraft(root: Path, rng: np.random.Generator) -> None:
    """``fgvc_aircraft/fgvc-aircraft-2013b/data/{images/<7 digits>.jpg, variants.txt,
    images_variant_{train,val,test,trainval}.txt}``: ``<image id> <variant name>`` per line; every image has a
    20-pixel banner at the bottom."""
    data = root / "fgvc_aircraft" / "fgvc-aircraft-2013b" / "data"
    variants = [*FGVC_VARIANTS, *(f"Variant {k:03d}" for k in range(len(FGVC_VARIANTS), 100))]
    _write_lines(data / "variants.txt", variants)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    image_id = 1025794
    for variant in FGVC_VARIANTS[:3]:
        for split in ("train", "train", "val", "test"):
            banner(data / "images" / f"{image_id:07d}.jpg", rng, (120, 90), banner_height=20)
            splits[split].append(f"{image_id:07d} {variant}")
            image_id += 1
    for split, lines in splits.items():
        _write_lines(data / f"images_variant_{split}.txt", lines)
    _write_lines(data / "images_variant_trainval.txt", splits["train"] + splits["val"])


def write_eurosat(root: Path, rng: np.random.Generator) -> None:
    """``eurosat/2750/<Class>/<Class>_<n>.jpg``, 64 x 64 RGB patches, all ten land-use classes (the loader
    takes its classes from the folders); four per class, so the 80/20 split trains on at least two of each."""
    for cls in EUROSAT_CLASSES:
        for n in range(1, 5):
            write_picture(root / "eurosat" / "2750" / cls / f"{cls}_{n}.jpg", rng, (64, 64))


def write_cub200(root: Path, rng: np.random.Generator) -> None:
    """``cub200_2011/CUB_200_2011/{images/<NNN.Name>/*.jpg, images.txt, image_class_labels.txt, classes.txt,
    train_test_split.txt, bounding_boxes.txt}``: ``<id> <value>`` tables, 1-based ids. Five test pictures per
    class, so retrieval's 20% query rule gives each class one query."""
    base = root / "cub200_2011" / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross",
               *(f"{k:03d}.Species_{k:03d}" for k in range(3, 201))]
    images, labels, split, boxes = [], [], [], []
    image_id = 1
    for label, cls in enumerate(classes[:2], start=1):
        species = cls.split(".", 1)[1].title()
        for k in range(7):
            name = f"{cls}/{species}_{46 + k:04d}_{18 + k}.jpg"
            write_picture(base / "images" / name, rng, (100, 80))
            images.append(f"{image_id} {name}")
            labels.append(f"{image_id} {label}")
            split.append(f"{image_id} {1 if k < 2 else 0}")
            boxes.append(f"{image_id} 10.0 8.0 60.0 50.0")
            image_id += 1
    _write_lines(base / "classes.txt", [f"{k} {c}" for k, c in enumerate(classes, start=1)])
    _write_lines(base / "images.txt", images)
    _write_lines(base / "image_class_labels.txt", labels)
    _write_lines(base / "train_test_split.txt", split)
    _write_lines(base / "bounding_boxes.txt", boxes)


#: CheXpert stand-in rows: (split, patient, view, values of the five competition labels in the loader's order
#: Cardiomegaly, Edema, Consolidation, Atelectasis, Pleural Effusion). The frontal train rows hold every kind of
#: value (1, 0, uncertain -1, blank); every label is positive and negative in both splits, and the two frontal
#: validation images have complementary label sets (any two test items score every label's AUROC).
CHEXPERT_ROWS = (
    ("train", 1, "frontal", ("1.0", "-1.0", "", "0.0", "-1.0")),
    ("train", 1, "lateral", ("1.0", "1.0", "1.0", "1.0", "1.0")),
    ("train", 2, "frontal", ("-1.0", "0.0", "1.0", "-1.0", "1.0")),
    ("train", 3, "frontal", ("0.0", "", "-1.0", "1.0", "0.0")),
    ("train", 4, "frontal", ("1.0", "1.0", "1.0", "", "1.0")),
    ("valid", 64541, "frontal", ("1.0", "0.0", "1.0", "0.0", "1.0")),
    ("valid", 64542, "frontal", ("0.0", "1.0", "0.0", "1.0", "0.0")),
    ("valid", 64542, "lateral", ("0.0", "1.0", "0.0", "1.0", "0.0")),
)
CHEXPERT_COMPETITION = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")


def write_chexpert(root: Path, rng: np.random.Generator) -> None:
    """``chexpert/CheXpert-v1.0-small/{train.csv, valid.csv, {train,valid}/patientNNNNN/study1/viewN_<view>.jpg}``:
    grayscale radiographs, frontal and lateral views; observations 1.0 (positive), 0.0, -1.0 (uncertain) or blank
    (not mentioned), the other nine observations filled with a pattern of the same values."""
    base = root / "chexpert" / "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS]
    values = ("1.0", "0.0", "-1.0", "")
    rows: dict[str, list[str]] = {"train": [",".join(header)], "valid": [",".join(header)]}
    for n, (split, patient, view, labels) in enumerate(CHEXPERT_ROWS):
        number = 1 if view == "frontal" else 2
        rel = f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study1/view{number}_{view}.jpg"
        write_picture(root / "chexpert" / rel, rng, (96, 80) if view == "frontal" else (80, 96), mode="L")
        given = dict(zip(CHEXPERT_COMPETITION, labels))
        observations = [given.get(name, values[(n + k) % 4]) for k, name in enumerate(CHEXPERT_OBSERVATIONS)]
        rows[split].append(",".join([rel, "Female", str(40 + patient % 50), view.title(),
                                     "AP" if view == "frontal" else "", *observations]))
    for split, lines in rows.items():
        _write_lines(base / f"{split}.csv", lines)


def write_visda2017(root: Path, rng: np.random.Generator) -> None:
    """``visda2017/{train,validation}/<class>/*`` with ``image_list.txt`` (``<class>/<file> <label>``) in each:
    synthetic renderings (PNG) for train, real COCO crops (JPEG) for validation."""
    for split, suffix in (("train", "png"), ("validation", "jpg")):
        lines = []
        for label, cls in enumerate(VISDA_CLASSES):
            for k in range(3 if split == "train" else 1):
                name = f"{cls}/src_1_{label:08d}_{k}.{suffix}"
                write_picture(root / "visda2017" / split / name, rng, (64, 64))
                lines.append(f"{name} {label}")
        _write_lines(root / "visda2017" / split / "image_list.txt", lines)
