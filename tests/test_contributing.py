"""CONTRIBUTING.md's recipes, followed: each recipe's code blocks are applied as written and the result is used.

A recipe's blocks are the fenced blocks of its section whose first line is a comment naming the file they go in
(``# bobkit/data/sources.py``). Registries are extended on temporary copies (``monkeypatch``) and files are written
under ``tmp_path``, so nothing is left in the repository or in the registries. Also: every ``bobkit/...`` path and
``bobkit.x.y`` name the document mentions exists.
"""

from __future__ import annotations

import importlib
import re
import sys
import textwrap
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import bobkit.tasks as tasks_pkg
from bobkit import backbones as B
from bobkit.backbones import catalog, registry
from bobkit.batch import codehash
from bobkit.batch.grid import expand_grid
from bobkit.cli import main as bob
from bobkit.data import datasets, sources

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "CONTRIBUTING.md").read_text()


def recipe_blocks(title: str) -> dict[str, str]:
    """``{file named on the first line: block}`` of the fenced blocks in section ``## Recipe: <title>``."""
    section = re.search(rf"^## Recipe: {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, flags=re.M | re.S)
    assert section, f"CONTRIBUTING.md has no section '## Recipe: {title}'"
    blocks: dict[str, str] = {}
    for _indent, body in re.findall(r"^( *)```\w+\n(.*?)^\1```", section.group(1), flags=re.M | re.S):
        code = textwrap.dedent(body)
        first = code.partition("\n")[0]
        assert first.startswith("# "), f"a recipe block starts with '# <file it goes in>': {first!r}"
        blocks[first[2:].split()[0]] = code
    return blocks


def grid_cells(block: str):
    """The cells of a recipe's grid block (a list item under ``grid:``), validated as a grid file is."""
    return expand_grid({"name": "recipe", "grid": yaml.safe_load(block)}, source="CONTRIBUTING.md")


# ------------------------------------------------------------------------------------------------------------
# Add a backbone
# ------------------------------------------------------------------------------------------------------------


def test_backbone_recipe_registers_lists_builds_and_validates(tmp_path, monkeypatch, capsys):
    blocks = recipe_blocks("add a backbone")
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the declaration lands in a copy
    before = set(B.backbone_names())
    exec(blocks["bobkit/backbones/catalog.py"], dict(vars(catalog)))
    (name,) = set(B.backbone_names()) - before
    entry = B.get_backbone(name)
    assert entry.source == "timm_hub" and entry.hub_id  # the hub id comes from timm's pretrained config

    # No internet: the weights are a checkpoint in $BOB_WEIGHTS_DIR named after the backbone (step 2).
    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("BOB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BOB_WEIGHTS_DIR", str(tmp_path / "weights"))
    (tmp_path / "weights").mkdir()
    torch.manual_seed(7)
    weights = timm.create_model(entry.timm_model, num_classes=1000).state_dict()
    save_file(weights, str(tmp_path / "weights" / f"{name}.safetensors"))

    assert bob(["backbones", "--offline"]) == 0  # step 3: listed among those available here
    row = next(line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == [name])
    assert row.split()[-1] in ("yes", "True")

    model = B.create_model(name)
    torch.testing.assert_close(model.state_dict()["conv1.0.weight"], weights["conv1.0.weight"])
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, model.num_features)
    assert entry.params_millions == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=0.01)

    cells = grid_cells(blocks["params/demo.yaml"])  # step 4
    assert [c.params["backbone"] for c in cells] == [name]


# ------------------------------------------------------------------------------------------------------------
# Add a dataset
# ------------------------------------------------------------------------------------------------------------

#: Pixel colour of each class of the tiny dataset the test writes.
COLOURS = {"cat": (200, 30, 30), "dog": (30, 30, 200)}


def _write_photos(root: Path, split: str, per_class: int) -> None:
    for cls, colour in COLOURS.items():
        folder = root / split / cls
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (12 + i, 10), colour).save(folder / f"{cls}_{i}.jpg", quality=95)


def test_dataset_recipe_reads_the_files_with_their_labels_and_a_grid_validates(tmp_path, monkeypatch, capsys):
    blocks = recipe_blocks("add a dataset")
    # Step 3: the manifest entry, appended to a copy of the manifest.
    manifest = tmp_path / "data_manifest.yaml"
    entry_yaml = blocks["data_manifest.yaml"]  # entries sit at column 0 under `entries:`
    manifest.write_text((REPO / "data_manifest.yaml").read_text().rstrip("\n") + "\n\n" + entry_yaml)
    monkeypatch.setenv("BOB_DATA_MANIFEST", str(manifest))
    (entry,) = yaml.safe_load(blocks["data_manifest.yaml"])
    name = entry["name"]
    data = tmp_path / "data"
    _write_photos(data / entry["root"], "train", 3)
    _write_photos(data / entry["root"], "test", 2)
    monkeypatch.setenv("BOB_DATA_DIR", str(data))

    # Step 1: the reader, defined among the readers; step 2: the registry entries, in copies of the registries.
    reader_namespace = dict(vars(sources))
    exec(blocks["bobkit/data/sources.py"], reader_namespace)
    reader = next(v for k, v in reader_namespace.items() if k.startswith("load_") and k not in vars(sources))
    monkeypatch.setattr(sources, reader.__name__, reader, raising=False)
    monkeypatch.setattr(datasets, "DATASETS", dict(datasets.DATASETS))
    monkeypatch.setattr(datasets, "_BUILDERS", dict(datasets._BUILDERS))
    exec(blocks["bobkit/data/datasets.py"], dict(vars(datasets)))

    assert bob(["data"]) == 0  # step 4: listed, and present in $BOB_DATA_DIR
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == [name])
    assert row[1:4] == ["dataset", entry["download"], "yes"]

    train = datasets.get_dataset(name, "train")
    assert train.classes == sorted(COLOURS) and len(train) == 6
    assert list(train.labels) == [0, 0, 0, 1, 1, 1]
    for image, label in train:  # each file's pixels are its class's colour: the labels are the right ones
        assert np.abs(np.asarray(image)[5, 5].astype(int) - COLOURS[train.classes[label]]).max() < 12
    assert len(datasets.get_dataset(name, "test")) == datasets.dataset_info(name).num_items["test"] == 4

    cells = grid_cells(blocks["params/demo.yaml"])  # step 5
    assert [c.params["dataset"] for c in cells] == [name]
    reader.cache_clear()


# ------------------------------------------------------------------------------------------------------------
# Add a task
# ------------------------------------------------------------------------------------------------------------


def _make_task_notebooks():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import make_task_notebooks
    finally:
        sys.path.remove(str(REPO / "tools"))
    return make_task_notebooks


def _run_notebook(path: Path, injected: dict) -> dict:
    """Run a task notebook's code cells here, with papermill's injected cell after the parameters cell."""
    nb = nbformat.read(path, as_version=4)
    namespace: dict = {"In": []}
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        sources_run = [cell.source]
        if "parameters" in cell.metadata.get("tags", []):
            sources_run.append("# Parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in injected.items()))
        for source in sources_run:
            namespace["In"].append(source)
            exec(compile(source, str(path), "exec"), namespace)
    return namespace


def test_task_recipe_registers_makes_its_notebook_runs_and_validates(tmp_path, monkeypatch):
    blocks = recipe_blocks("add a task")
    module_file = next(k for k in blocks if k.startswith("bobkit/tasks/") and k != "bobkit/tasks/__init__.py")
    task = Path(module_file).stem
    module_name = f"bobkit.tasks.{task}"
    # Step 1: the module, in a folder added to the bobkit.tasks package (so it is bobkit.tasks.<task>).
    package_dir = tmp_path / "tasks"
    package_dir.mkdir()
    (package_dir / f"{task}.py").write_text(blocks[module_file])
    monkeypatch.setattr(tasks_pkg, "__path__", [*tasks_pkg.__path__, str(package_dir)])
    # Step 2: the registration, in a copy of TASKS.
    monkeypatch.setattr(tasks_pkg, "TASKS", dict(tasks_pkg.TASKS))
    exec(blocks["bobkit/tasks/__init__.py"], dict(vars(tasks_pkg)))
    try:
        assert task in tasks_pkg.task_names() and tasks_pkg.TASKS[task] == module_name
        spec = tasks_pkg.get_spec(task)
        module = tasks_pkg.get_task(task)
        assert module.PARAMETERS == spec.defaults()
        assert any(m.primary and m.kind == "score" for m in spec.metrics)

        # Step 3: the tool writes the notebook (into tmp_path, not the repository).
        tool = _make_task_notebooks()
        monkeypatch.setattr(tool, "REPO", tmp_path)
        (tmp_path / "notebooks" / "tasks").mkdir(parents=True)
        assert tool.main([]) == 0 and tool.main(["--check"]) == 0
        notebook = tmp_path / tasks_pkg.notebook_path(task)
        cells = nbformat.read(notebook, as_version=4).cells
        (parameters,) = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
        assert parameters.source == spec.parameters_cell()

        # The notebook runs the task with injected parameters; run() returns the declared metrics.
        tiny = dict(backbone="resnet18.random_init", dataset="sklearn_digits", image_size=32, max_train=60,
                    max_test=40, device="cpu", num_threads=1)
        result = _run_notebook(notebook, tiny)["result"]
        assert set(result.scores) == {"top1"} and result.stderr and result.n_items == {"top1": 40}
        undeclared = [k for k in result if not k.startswith(("se/", "n/")) and spec.metric(k) is None]
        assert not undeclared, f"outputs the declaration does not name: {undeclared}"

        # top1 by hand from the same (now cached) features: nearest centroid by cosine.
        from bobkit.features.extract import extract_features

        common = dict(image_size=32, seed=0, device="cpu")
        train = extract_features("resnet18.random_init", "sklearn_digits", "train", max_samples=60, **common)
        test = extract_features("resnet18.random_init", "sklearn_digits", "test", max_samples=40, **common)
        assert train.cache_hit and test.cache_hit

        def unit(x):
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        centroids = unit(np.stack([train.features[train.labels == c].mean(0) for c in range(10)]))
        expected = float(((unit(test.features) @ centroids.T).argmax(1) == test.labels).mean())
        assert result["top1"] == pytest.approx(expected)

        cells = grid_cells(blocks["params/demo.yaml"])  # step 4
        assert [(c.task, c.params["max_test"]) for c in cells] == [(task, 40)]
    finally:
        sys.modules.pop(module_name, None)
        if hasattr(tasks_pkg, task):
            delattr(tasks_pkg, task)
        codehash._KNOWN.pop(task, None)


# ------------------------------------------------------------------------------------------------------------
# Every path and dotted name the document mentions exists
# ------------------------------------------------------------------------------------------------------------

#: What the recipes add: mentioned by the document, made by the reader.
RECIPE_NAMES = ("nearest_mean", "my_photos", "load_my_photos")
PATH = re.compile(r"(?<![\w/.])((?:bobkit|tools|tests|params|notebooks|\.ci)/[\w./-]*)")
DOTTED = re.compile(r"(?<![\w/.])(bobkit(?:\.[A-Za-z_]\w*)+)")


def _mentioned(pattern: re.Pattern) -> set[str]:
    """Matches of ``pattern`` in the document, less placeholders (``runs/<task>``, ``NN_*.ipynb``) and what the
    recipes add."""
    found = {m.group(1).rstrip(".") for m in pattern.finditer(DOC) if DOC[m.end():m.end() + 1] not in "<*{"}
    return {m for m in found if not any(name in m for name in RECIPE_NAMES)}


def test_every_mentioned_path_exists():
    paths = _mentioned(PATH)
    assert {"bobkit/backbones/catalog.py", "bobkit/data/sources.py", "bobkit/tasks/blocks.py"} <= paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"CONTRIBUTING.md names paths that do not exist: {missing}"


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                try:
                    obj = importlib.import_module(f"{obj.__name__}.{attr}")
                except (ModuleNotFoundError, AttributeError):
                    return False
            else:
                obj = getattr(obj, attr)
        return True
    return False


def test_every_mentioned_dotted_name_exists():
    names = _mentioned(DOTTED)
    assert {"bobkit.batch.grid", "bobkit.results.schema", "bobkit.analysis.notebook"} <= names
    missing = sorted(n for n in names if not _resolves(n))
    assert not missing, f"CONTRIBUTING.md names modules or objects that do not exist: {missing}"


def test_recipe_blocks_name_files_that_exist():
    """Each block says which existing file it goes into (the new task module is the one new file)."""
    for title in ("add a backbone", "add a dataset", "add a task"):
        for target in recipe_blocks(title):
            assert (REPO / target).exists() or target == "bobkit/tasks/nearest_mean.py", (title, target)
