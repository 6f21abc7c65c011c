"""Shared artifacts: the store (verified, damaged ones set aside and made again), training identities and staleness,
producers before consumers in a batch (the local backend and the submitit path), and a consumer's numbers equal
to a retraining's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bobkit.batch.backends import (
    dependency_waves,
    group_by_dependencies,
    run_submitit,
    sbatch_script,
    slurm_dependency,
)
from bobkit.batch.grid import artifact_links, expand_grid, make_cell, producers_first, providers_of
from bobkit.batch.runner import run_cells, run_dir_of
from bobkit.batch.status import format_status, grid_status
from bobkit.features import artifacts
from bobkit.features.artifacts import ArtifactRef, artifact_ref, entry_path
from bobkit.results.sidecars import read_sidecar
from bobkit.tasks import classification, ood, robustness, trained
from bobkit.tasks.training import ProbeFit, fit_probe

BACKBONE = "resnet18.random_init"
TINY = dict(backbone=BACKBONE, dataset="fashion_mnist", image_size=32, max_train=120, max_test=60, seed=0,
            num_threads=1)


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Path:
    """An empty artifacts folder of this test."""
    root = tmp_path / "artifacts"
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(root))
    return root


def _probe(seed: int = 0) -> ProbeFit:
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(60, 5)).astype(np.float32), np.arange(60) % 3
    return fit_probe(x, y, num_classes=3, l2=0.1)


# ----------------------------------------------------------------------------------------------------------------
# The store
# ----------------------------------------------------------------------------------------------------------------


def test_a_probe_round_trips_bit_for_bit_with_its_sha256_recorded(store: Path):
    ref = artifact_ref("probe", {"what": "round trip"})
    fit = _probe()
    stored = trained.save_probe(ref, fit, n_train=60)
    assert stored.path == store / "probe" / ref.key
    tensors = stored.path / artifacts.TENSORS_FILE
    import hashlib

    assert stored.sha256 == hashlib.sha256(tensors.read_bytes()).hexdigest()
    assert stored.meta["identity"] == {"kind": "probe", "what": "round trip"}
    loaded, n = trained.load_probe(artifacts.find(ref))
    assert n == 60 and loaded.l2 == 0.1 and not loaded.selected
    for name in trained.PROBE_TENSORS:
        assert torch.equal(getattr(loaded.probe, name), getattr(fit.probe, name))
    x = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    assert np.array_equal(loaded.probe.logits(x), fit.probe.logits(x))


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_meta", "edit_meta"])
def test_a_damaged_artifact_is_set_aside_and_its_producer_runs_again(store: Path, damage: str):
    ref = artifact_ref("probe", {"what": damage})
    fits: list[int] = []

    def fit() -> tuple[ProbeFit, int]:
        fits.append(1)
        return _probe(), 60

    first, _, loaded = trained.fitted_probe(ref, fit)
    assert not loaded and len(fits) == 1
    assert trained.fitted_probe(ref, fit)[2] and len(fits) == 1  # intact: loaded, not fitted
    entry = entry_path(ref)
    tensors = entry / artifacts.TENSORS_FILE
    if damage == "flip_byte":
        data = bytearray(tensors.read_bytes())
        data[-3] ^= 0xFF
        tensors.write_bytes(bytes(data))
    elif damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[:40])
    elif damage == "delete_meta":
        (entry / artifacts.META).unlink()
    else:
        (entry / artifacts.META).write_text("{\"format\": 2}")
    with pytest.warns(UserWarning, match="damaged"):
        again, _, loaded = trained.fitted_probe(ref, fit)
    assert not loaded and len(fits) == 2  # the producer ran again and published a fresh copy
    assert torch.equal(again.probe.weight, first.probe.weight)
    assert len(list(entry.parent.glob(f"{ref.key}.bad-*"))) == 1  # kept for inspection, not served
    assert artifacts.find(ref) is not None


def test_fine_tuned_weights_are_published_once_and_loaded_verified(store: Path):
    ref = artifact_ref("model", {"what": "weights"})
    trainings: list[int] = []

    def train() -> tuple[dict[str, torch.Tensor], dict]:
        trainings.append(1)
        torch.manual_seed(0)
        return dict(torch.nn.Linear(3, 2).state_dict()), {"losses": [1.0, 0.5]}

    artifacts.reset_ledger()
    weights, record, loaded = trained.finetuned_weights(ref, train)
    again, record2, loaded2 = trained.finetuned_weights(ref, train)
    assert (loaded, loaded2, len(trainings)) == (False, True, 1) and record == record2 == {"losses": [1.0, 0.5]}
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    ledger = artifacts.ledger()
    assert [e["how"] for e in ledger] == ["published", "loaded"] and ledger[0]["sha256"] == ledger[1]["sha256"]


# ----------------------------------------------------------------------------------------------------------------
# Identities: producers and consumers agree; a changed producer makes a new consumer
# ----------------------------------------------------------------------------------------------------------------


def _cells(**extra):
    probe = make_cell("classification", {**TINY, **extra.get("classification", {})})
    consumer = make_cell("ood", {**TINY, "targets": ["corruptions"], **extra.get("ood", {})})
    return probe, consumer


def test_an_ood_probe_cell_needs_what_the_classification_probe_cell_produces():
    probe, consumer = _cells()
    assert probe.produces == consumer.needs and consumer.needs[0].kind == "probe"
    described = consumer.needs[0].describe()
    assert described["weights"] == "random_init-seed0" and described["recipe"] == {
        "solver": "lbfgs", "l2": "auto", "max_iter": 20}
    # Another probe budget, subset or source split is another training: nothing to share.
    assert _cells(ood={"probe_max_iter": 5})[1].needs != probe.produces
    assert _cells(ood={"max_train": 100})[1].needs != probe.produces
    # SGD epochs count only for the SGD solver; fine-tunes need weights, not a probe.
    sgd = {"probe_solver": "sgd", "probe_epochs": 3}
    a, b = _cells(classification=sgd, ood=sgd)
    assert a.produces == b.needs != probe.produces
    ft = {"protocol": "finetune", "epochs": 2, "lr": 0.01}
    a, b = _cells(classification=ft, ood=ft)
    assert a.produces == b.needs and b.needs[0].kind == "model"
    # robustness: the classification probe's only when the temperature's items come from another split.
    held = make_cell("robustness", {**TINY})
    shared = make_cell("robustness", {**TINY, "calibration_split": "test"})
    assert shared.needs == probe.produces and held.needs != probe.produces
    assert held.needs[0].describe()["subset"]["holdout"] == {"fraction": 0.2, "seed": 0}


def test_a_retrained_producer_makes_the_consumer_a_new_cell(monkeypatch):
    probe, consumer = _cells()
    monkeypatch.setattr(trained, "probe_code", lambda: "other training code")
    probe2, consumer2 = _cells()
    assert consumer2.needs == probe2.produces != probe.produces
    assert consumer2.run_key != consumer.run_key  # stale: its artifact would be another one
    assert consumer2.params == consumer.params


def test_a_fine_tune_consumer_needs_every_recipe_parameter_of_the_one_declaration():
    declared = classification.blocks.finetune_params(lr_selection=True)
    names = {p.name for p in declared if p.kind != "execution"}
    _, consumer = _cells(ood={"protocol": "finetune"})
    assert set(consumer.needs[0].describe()["recipe"]) == names | {"batch_size"}
    # How the global batch is split is execution: the OOM retry's doubled accum_steps is the same training.
    assert "accum_steps" in {p.name for p in declared} - names
    ft = {"protocol": "finetune", "batch_size": 20}
    producer, consumer = _cells(classification=ft, ood={**ft, "accum_steps": 2})
    assert producer.produces == consumer.needs


# ----------------------------------------------------------------------------------------------------------------
# Ordering
# ----------------------------------------------------------------------------------------------------------------

ORDER_GRID = {"grid": [
    {"task": "smoke", "need": "shared", "value": 5.0},                      # a consumer listed first
    {"task": "smoke", "publish": "shared", "value": 7.0, "mode": "sleep", "sleep_seconds": 3.0},
    {"task": "smoke", "value": 1.0},                                        # independent
    {"task": "smoke", "need": "broken", "value": 2.0},                      # its producer fails
    {"task": "smoke", "publish": "broken", "value": 3.0, "mode": "raise"},
]}


def test_links_order_and_waves_put_producers_first():
    consumer, producer, alone, orphan, bad = expand_grid(ORDER_GRID)
    links = artifact_links([consumer, producer, alone, orphan, bad])
    assert providers_of(links, consumer) == [producer] and providers_of(links, orphan) == [bad]
    assert providers_of(links, alone) == [] and providers_of(links, producer) == []
    ordered = producers_first([consumer, producer, alone, orphan, bad], links)
    assert ordered.index(producer) < ordered.index(consumer) and ordered.index(bad) < ordered.index(orphan)
    assert dependency_waves(ordered, links) == [[producer, alone, bad], [consumer, orphan]]
    # Without a producer in the batch, the first consumer makes the artifact and the others wait for it.
    c1, c2 = expand_grid({"grid": [{"task": "smoke", "need": "x", "value": [1.0, 2.0]}]})
    assert providers_of(artifact_links([c1, c2]), c2) == [c1] and not artifact_links([c1, c2]).get(c1.run_key)

    class Job:
        def __init__(self, job_id: str) -> None:
            self.job_id = job_id

    groups = group_by_dependencies([consumer, orphan], links, {producer.run_key: Job("41_1"),
                                                                bad.run_key: Job("41_2")})
    assert [(after, len(group)) for _, after, group in groups] == [(("41_1",), 1), (("41_2",), 1)]
    assert slurm_dependency(["41_1", "42"]) == {"dependency": "afterok:41_1:42", "kill_on_invalid_dep": "yes"}


def test_the_sbatch_script_of_a_consumer_array_carries_its_dependency(tmp_path: Path):
    plain = sbatch_script({"timeout_min": 10}, tmp_path)
    consumer = sbatch_script({"timeout_min": 10}, tmp_path, after=["7_0", "8"])
    assert "dependency" not in plain and "kill-on-invalid-dep" not in plain
    assert "#SBATCH --dependency=afterok:7_0:8" in consumer and "#SBATCH --kill-on-invalid-dep=yes" in consumer


def test_status_shows_a_consumer_waiting_for_its_producer(write_grid, tmp_path: Path):
    grid = write_grid("grid:\n  - task: smoke\n    need: w\n  - task: smoke\n    publish: w\n    value: 2.0\n")
    status = grid_status(grid, tmp_path / "runs")
    text = format_status(status, grid, tmp_path / "runs")
    (line,) = [ln for ln in text.splitlines() if "waiting for" in ln]
    assert "need=w" in line.split("waiting for")[0] and "publish=w" in line.split("waiting for")[1]


@pytest.mark.parametrize("producer_kind", ["exception", "code_changed"])
def test_only_a_recorded_producer_failure_fails_its_consumer(tmp_path: Path, monkeypatch, producer_kind: str):
    """A producer that failed (recorded) fails its consumer without running it; one whose code changed under the
    batch recorded nothing, so its consumer runs (it decides for itself)."""
    import bobkit.batch.runner as runner_module
    from bobkit.batch.runner import CellOutcome

    consumer, producer = expand_grid({"grid": ORDER_GRID["grid"][:2]})
    ran: list[str] = []

    def fake_execute(cell, runs_dir, **_):
        ran.append(cell.run_key)
        if cell.run_key == producer.run_key:
            return CellOutcome(cell, "failed", error="it broke", kind=producer_kind)
        return CellOutcome(cell, "complete")

    monkeypatch.setattr(runner_module, "execute_cell", fake_execute)
    summary = run_cells([consumer, producer], tmp_path / "runs", workers=2, progress=False)
    outcome = next(o for o in summary.outcomes if o.cell.run_key == consumer.run_key)
    if producer_kind == "code_changed":
        assert ran == [producer.run_key, consumer.run_key] and outcome.status == "complete"
    else:
        assert ran == [producer.run_key] and outcome.kind == "producer_failed" and "it broke" in outcome.error
        recorded = read_sidecar(run_dir_of(consumer, tmp_path / "runs"))
        assert recorded["status"] == "failed" and recorded["error"]["kind"] == "producer_failed"
        assert producer.label in recorded["error"]["message"] and recorded["needs"] == [consumer.needs[0].name]


@pytest.mark.slow
def test_the_local_batch_runs_producers_first_and_fails_consumers_of_a_failed_producer(tmp_path: Path, store: Path):
    cells = expand_grid(ORDER_GRID)
    consumer, producer, alone, orphan, bad = cells
    runs = tmp_path / "runs"
    summary = run_cells(cells, runs, workers=2, progress=False)
    status = {o.cell.run_key: o.status for o in summary.outcomes}
    assert [status[c.run_key] for c in cells] == ["complete", "complete", "complete", "failed", "failed"]
    side = {c.run_key: read_sidecar(run_dir_of(c, runs)) for c in cells}
    s_con, s_pro, s_alone = side[consumer.run_key], side[producer.run_key], side[alone.run_key]
    # Started before the producer, the consumer waited for it without holding a worker: the independent cell ran
    # beside the producer meanwhile.
    producer_end = s_pro["started"] + s_pro["wall_seconds"]
    assert s_con["started"] >= producer_end and s_alone["started"] < producer_end
    assert s_con["timings"]["artifact_value"] == 7.0 and s_con["timings"]["artifact_loaded"] == 1.0
    (used,), (made,) = s_con["artifacts"], s_pro["artifacts"]
    assert used["how"] == "loaded" and made["how"] == "published" and used["sha256"] == made["sha256"]
    assert used["key"] == consumer.needs[0].key and s_con["needs"] == [consumer.needs[0].name]
    error = side[orphan.run_key]["error"]
    assert error["kind"] == "producer_failed" and bad.label in error["message"] and bad.run_key in error["message"]
    assert "RuntimeError" in error["message"]


@pytest.mark.slow
def test_submitit_local_jobs_of_consumers_wait_for_their_producers(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(artifacts.ARTIFACTS_ENV, raising=False)
    cells = expand_grid({"grid": ORDER_GRID["grid"][:2]})
    runs = tmp_path / "runs"
    summary = run_submitit(cells, runs, cluster="local", progress=False)
    assert sorted(o.status for o in summary.outcomes) == ["complete", "complete"]
    consumer, producer = (read_sidecar(run_dir_of(c, runs)) for c in cells)
    assert consumer["started"] >= producer["started"] + producer["wall_seconds"]
    assert consumer["timings"]["artifact_value"] == 7.0
    assert Path(consumer["artifacts"][0]["path"]).parent.parent == runs.resolve() / ".artifacts"


# ----------------------------------------------------------------------------------------------------------------
# A consumer's numbers are a retraining's
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ood_and_robustness_with_the_classification_probe_equal_their_own_refit(tmp_path: Path, monkeypatch,
                                                                                 store: Path):
    made = classification.run(**TINY)
    assert [e["how"] for e in made.artifacts] == ["published"]
    oodp = dict(TINY, targets=["corruptions"], corruptions=["gaussian_noise"], severities=[2], max_corrupted=30)
    robp = dict(TINY, calibration_split="test", epsilons=[0.0, 1.0], attacks=["fgsm"], max_attack=12)
    shared_ood, shared_rob = ood.run(**oodp), robustness.run(**robp)
    assert [e["how"] for e in shared_ood.artifacts + shared_rob.artifacts] == ["loaded", "loaded"]
    assert shared_ood["train_seconds"] < made["train_seconds"] or made["train_seconds"] < 0.05
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "empty"))  # no artifact: each cell fits its own
    own_ood = ood.run(**oodp)
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "empty too"))
    own_rob = robustness.run(**robp)
    assert [e["how"] for e in own_ood.artifacts + own_rob.artifacts] == ["published", "published"]
    assert own_ood.scores == shared_ood.scores and own_ood.stderr == shared_ood.stderr
    assert own_rob.scores == shared_rob.scores and own_rob["n_train"] == made["n_train"] == 120
    assert own_ood.artifacts[0]["sha256"] == made.artifacts[0]["sha256"]  # the very same head, bit for bit
    assert shared_rob["n_test"] == 60 - 10  # 20% of each class's 6 test items (1 of each) fit the temperature


def test_refs_compare_by_kind_and_key_only():
    a = ArtifactRef("probe", "abc", "one label")
    assert a == ArtifactRef("probe", "abc", "another") and a != ArtifactRef("model", "abc")
    with pytest.raises(ValueError, match="kind"):
        ArtifactRef("weights", "abc")
    assert os.fspath(entry_path(a, "/x")) == "/x/probe/abc"


@pytest.mark.slow
def test_bob_run_artifacts_dir_is_where_the_cells_publish(write_grid, tmp_path: Path, monkeypatch, capsys):
    from bobkit.cli import main

    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "not this one"))  # restored after the test
    grid = write_grid("grid:\n  - task: smoke\n    publish: here\n    value: 4.0\n")
    chosen = tmp_path / "shared folder"
    assert main(["run", str(grid), "--runs-dir", str(tmp_path / "runs"), "--artifacts-dir", str(chosen),
                 "--no-progress"]) == 0
    (cell,) = expand_grid({"grid": [{"task": "smoke", "publish": "here", "value": 4.0}]})
    assert artifacts.find(cell.produces[0], chosen) is not None
    assert not (tmp_path / "not this one").exists()


@pytest.mark.slow
def test_an_ood_fine_tune_after_the_classification_fine_tune_loads_its_weights_and_equals_retraining(
        tmp_path: Path, monkeypatch, store: Path):
    ft = dict(TINY, protocol="finetune", epochs=1, lr=3e-3, batch_size=20)
    made = classification.run(**ft)
    assert [e["how"] for e in made.artifacts] == ["published"] and made["train_loaded"] == 0.0
    oodp = dict(ft, targets=["corruptions"], corruptions=["gaussian_noise"], severities=[2], max_corrupted=30)
    shared = ood.run(**oodp)
    assert [e["how"] for e in shared.artifacts] == ["loaded"] and shared["train_loaded"] == 1.0
    assert shared.artifacts[0]["sha256"] == made.artifacts[0]["sha256"]
    # The classification cell's own numbers and the OOD cell's in-distribution accuracy are the same model's.
    assert shared["id_acc"] == made["top1"] and shared["n_test"] == made["n_test"]
    monkeypatch.setenv(artifacts.ARTIFACTS_ENV, str(tmp_path / "empty"))  # no artifact: the cell trains itself
    own = ood.run(**oodp)
    assert [e["how"] for e in own.artifacts] == ["published"] and own["train_loaded"] == 0.0
    assert own.artifacts[0]["sha256"] == made.artifacts[0]["sha256"]  # the same weights, bit for bit
    assert own.scores == shared.scores and own.stderr == shared.stderr
    assert own["train_final_loss"] == shared["train_final_loss"] == made["train_final_loss"]
