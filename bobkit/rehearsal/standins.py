"""The stand-in registry: for every dataset a paper suite reads, a writer of a few generated images in that
dataset's published on-disk layout.

A stand-in is read by the very loader a real run uses (``bobkit.data.get_dataset``, the retrieval, OOD and
detection loaders), found through ``$BOB_DATA_DIR`` and verified like the real files (see
:mod:`bobkit.rehearsal.environment`). Which documentation each layout follows is recorded once, as the
``layout_source`` of the dataset's entry in ``data_manifest.yaml`` (:func:`layout_source`).

Stand-ins are written into a fresh temporary folder that nothing else reads, so plain writes are enough there
(no atomic rename needed).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from bobkit.rehearsal import layouts_classification as cls
from bobkit.rehearsal import layouts_imagenet as inet
from bobkit.rehearsal import layouts_retrieval as ret
from bobkit.rehearsal import layouts_scenes as scn

Writer = Callable[[Path, np.random.Generator], None]


@dataclass(frozen=True)
class StandIn:
    """How to write one dataset's stand-in.

    Attributes
    ----------
    name
        The dataset's name in the loaders and its ``data_manifest.yaml`` entry.
    write
        ``write(data_dir, rng)`` lays the files out under a data directory.
    needs
        Stand-ins whose files this one points into (the 1% list names ImageNet train images).
    """

    name: str
    write: Writer
    needs: tuple[str, ...] = ()


def _subset(percent: int) -> Writer:
    return lambda root, rng: inet.write_imagenet_subset(root, percent)


STANDINS: dict[str, StandIn] = {s.name: s for s in [
    StandIn("imagenet_1k", inet.write_imagenet),
    StandIn("imagenet_1k_1pct", _subset(1), needs=("imagenet_1k",)),
    StandIn("imagenet_1k_10pct", _subset(10), needs=("imagenet_1k",)),
    StandIn("imagenet_a", inet.write_imagenet_a),
    StandIn("imagenet_r", inet.write_imagenet_r),
    StandIn("imagenet_sketch", inet.write_imagenet_sketch),
    StandIn("imagenet_v2", inet.write_imagenet_v2),
    StandIn("cifar100", cls.write_cifar100),
    StandIn("flowers102", cls.write_flowers102),
    StandIn("fgvc_aircraft", cls.write_fgvc_aircraft),
    StandIn("eurosat", cls.write_eurosat),
    StandIn("cub200_2011", cls.write_cub200),
    StandIn("chexpert", cls.write_chexpert),
    StandIn("visda2017", cls.write_visda2017),
    StandIn("inat2021_val", ret.write_inat2021_val),
    StandIn("objectnet", ret.write_objectnet),
    StandIn("instre", ret.write_instre),
    StandIn("gldv2", ret.write_gldv2),
    StandIn("copydays", ret.write_copydays),
    StandIn("roxford5k", partial(scn.write_revisited, name="roxford5k")),
    StandIn("rparis6k", partial(scn.write_revisited, name="rparis6k")),
    StandIn("coco2017", scn.write_coco2017),
    StandIn("sim10k", scn.write_sim10k),
    StandIn("cityscapes", scn.write_cityscapes),
]}


def standin_names() -> list[str]:
    """Datasets that have a stand-in."""
    return list(STANDINS)


def with_needs(names: Iterable[str], standins: Mapping[str, StandIn] = STANDINS) -> list[str]:
    """``names`` that have a stand-in, plus the stand-ins they need, each once (needed ones first)."""
    out: list[str] = []

    def add(name: str) -> None:
        if name in out or name not in standins:
            return
        for needed in standins[name].needs:
            add(needed)
        out.append(name)

    for name in names:
        add(name)
    return out


def write_standins(names: Iterable[str], data_dir: Path, *, seed: int = 0,
                   overrides: Mapping[str, Writer] | None = None) -> list[str]:
    """Write the stand-ins of ``names`` (and those they need) under ``data_dir``; return the names written.

    Parameters
    ----------
    names
        Dataset names; those without a stand-in are skipped (offline datasets are read for real).
    data_dir
        The folder ``$BOB_DATA_DIR`` will point to.
    seed
        Each stand-in draws from its own generator seeded by ``seed`` and its name (same bytes on every run).
    overrides
        Replacement writers by dataset name (a test plants a wrong layout this way).
    """
    standins = dict(STANDINS)
    for name, write in (overrides or {}).items():
        standins[name] = StandIn(name, write, STANDINS[name].needs if name in STANDINS else ())
    written = with_needs(names, standins)
    for name in written:
        standins[name].write(data_dir, np.random.default_rng([seed, _name_seed(name)]))
    return written


def _name_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def layout_source(name: str) -> str | None:
    """The documentation of ``name``'s on-disk layout, as cited in ``data_manifest.yaml`` (None if not cited)."""
    from bobkit.data.manifest import load_manifest

    manifest = load_manifest()
    return manifest.entry(name).raw.get("layout_source") if name in manifest else None
