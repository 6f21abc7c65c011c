"""The task contract: every task's declaration (parameters, metrics), its validation, and the harness around run()."""

from __future__ import annotations

import ast
import inspect
import json
import math
import re
from pathlib import Path

import pytest

from bobkit.tasks import ParameterError, UnknownParameterError, get_spec, get_task, notebook_parameters, task_names
from bobkit.tasks.contract import KINDS, Metric, Param, TaskSpec, check_value, descriptor
from bobkit.tasks.harness import TaskResult, run_task

REPO = Path(__file__).resolve().parents[1]
TASKS = task_names()
PACKAGED = "mobilenetv2_100.packaged_tv_in1k"


def _subscripted_names(module_source: str, variables: tuple[str, ...] = ("p", "params")) -> set[str]:
    """Every ``p["name"]`` / ``params["name"]`` a task module reads."""
    found = set()
    for node in ast.walk(ast.parse(module_source)):
        if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in variables
                and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)):
            found.add(node.slice.value)
    return found


# ------------------------------------------------------------------------------------------------------------
# Every task, from the registry
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_every_task_declares_every_parameter_it_reads(task):
    spec, module = get_spec(task), get_task(task)
    read = _subscripted_names(Path(module.__file__).read_text())
    assert read, "the task reads its parameters from p[...]"
    assert read <= set(spec.names()), f"{task} reads undeclared parameter(s) {sorted(read - set(spec.names()))}"
    assert list(inspect.signature(module.run).parameters) == spec.names()  # run() accepts exactly the declared
    assert module.PARAMETERS == spec.defaults()


@pytest.mark.parametrize("task", TASKS)
def test_every_default_validates_and_is_already_normalised(task):
    spec = get_spec(task)
    assert spec.validate({}) == spec.defaults()
    assert spec.validate(spec.defaults()) == spec.defaults()


@pytest.mark.parametrize("task", TASKS)
def test_every_parameter_is_documented_on_one_line_with_a_kind(task):
    spec = get_spec(task)
    for p in spec.parameters:
        assert p.doc and "\n" not in p.doc and p.kind in KINDS, p.name
    kinds = {p.name: p.kind for p in spec.parameters}
    assert kinds["seed"] == "seed" and kinds["output_dir"] == "execution"
    assert all(kinds[n] == "execution" for n in ("device", "num_threads", "precision") if n in kinds)
    assert kinds.get("backbone", "backbone") == "backbone"
    assert "seed" not in spec.setting_params(spec.defaults()) and "backbone" not in spec.setting_params(spec.defaults())


@pytest.mark.parametrize("task", TASKS)
def test_every_task_declares_a_primary_score(task):
    spec = get_spec(task)
    assert any(m.primary and m.kind == "score" for m in spec.metrics)


def test_declarations_decide_direction_and_kind_not_the_name():
    robustness, ood = get_spec("robustness"), get_spec("ood")
    assert robustness.metric("ece_ts").higher_is_better is False
    assert robustness.metric("acc/pgd/2").primary and not robustness.metric("acc/fgsm/2").primary
    assert robustness.metric("temperature").kind == "descriptor"
    assert ood.metric("mca_drop").higher_is_better is False and ood.metric("drop_sklearn_digits").higher_is_better is False
    assert ood.metric("acc/sklearn_digits").primary and not ood.metric("acc/contrast/3").primary
    assert get_spec("retrieval").metric("precision@5").n_items == "n_queries"


def test_no_declaration_imports_a_task_and_no_task_takes_constants_from_another():
    for module in ("contract", "blocks", "harness"):
        source = (REPO / "bobkit" / "tasks" / f"{module}.py").read_text()
        assert not any(f"bobkit.tasks.{task}" in source for task in TASKS), module
    for task in TASKS:
        tree = ast.parse((REPO / "bobkit" / "tasks" / f"{task}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in {f"bobkit.tasks.{t}" for t in TASKS}:
                constants = [a.name for a in node.names if a.name.isupper() or a.name == "SPEC"]
                assert not constants, f"{task} takes {constants} from {node.module}"


# ------------------------------------------------------------------------------------------------------------
# Validation of values
# ------------------------------------------------------------------------------------------------------------

TOY = TaskSpec(
    name="toy",
    summary="a task for the tests",
    parameters=(
        Param("size", int, 8, "a size", low=1, high=100, high_note="larger values can exhaust memory"),
        Param("rate", float, 0.5, "a rate", low=0.0, low_open=True, high=1.0),
        Param("flag", bool, False, "a flag"),
        Param("mode", str, "fast", "a mode", choices=("fast", "slow")),
        Param("limit", int, None, "optional"),
        Param("eps", list, [0.0, 1.0], "radii", item=float, low=0.0, min_items=1),
        Param("names", list, ["a"], "names", item=str, choices=("a", "b", "c")),
        Param("seed", int, 0, "seed", kind="seed", low=0),
    ),
    metrics=(Metric("top1", "accuracy", primary=True, n_items="n_test"), Metric("nll", "loss", higher_is_better=False),
             descriptor("n_*", "counts"), descriptor("*_seconds", "time")),
)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"size": True}, "size=True must be an integer, not a bool"),
        ({"size": 2.0}, "size=2.0 must be an integer"),
        ({"size": 0}, "size=0 must be at least 1"),
        ({"size": 101}, "size=101 is above its maximum 100 (larger values can exhaust memory)"),
        ({"rate": float("nan")}, "rate=nan must be a finite number"),
        ({"rate": float("inf")}, "rate=inf must be a finite number"),
        ({"rate": 0}, "rate=0 must be above 0"),
        ({"rate": "x"}, "rate='x' is not a number"),
        ({"flag": 1}, "flag=1 must be true or false"),
        ({"flag": "yes"}, "flag='yes' must be true or false"),
        ({"mode": "fsat"}, "mode='fsat' is not one of 'fast', 'slow' (did you mean 'fast'?)"),
        ({"mode": None}, "mode=None must be a string, not None"),
        ({"eps": "x"}, "eps='x' item 'x' is not a number"),
        ({"eps": [1, -1]}, "eps=[1, -1] item -1 must be at least 0"),
        ({"eps": []}, "eps=[] needs at least 1 item"),
        ({"eps": [1, 1.0]}, "eps=[1, 1.0] repeats 1.0"),
        ({"names": ["d"]}, "names=['d'] item 'd' is not one of"),
        ({"seed": -1}, "seed=-1 must be at least 0"),
    ],
)
def test_bad_values_are_named_with_the_parameter(overrides, needle):
    with pytest.raises(ParameterError) as info:
        TOY.validate(overrides)
    assert str(info.value).startswith("toy parameter ") and needle in str(info.value)


def test_unknown_names_are_all_named_with_their_close_match():
    with pytest.raises(UnknownParameterError) as info:
        TOY.validate({"szie": 3, "rte": 0.1})
    message = str(info.value)
    assert "'szie' (did you mean 'size'?)" in message and "'rte' (did you mean 'rate'?)" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


@pytest.mark.parametrize(
    "given, expected",
    [
        ("[0, 1, 2]", [0.0, 1.0, 2.0]),  # JSON / YAML list, as `papermill -p eps '[0, 1, 2]'` passes it
        ("[0.5, 2]", [0.5, 2.0]),
        ("0, 1,2", [0.0, 1.0, 2.0]),  # comma-separated
        ("4", [4.0]),
        (3, [3.0]),  # one value
        ((1, 2), [1.0, 2.0]),
    ],
)
def test_list_parameters_accept_lists_json_yaml_and_comma_strings(given, expected):
    assert TOY.validate({"eps": given})["eps"] == expected


def test_list_of_strings_from_json_and_strings_for_scalars():
    assert TOY.validate({"names": '["a", "c"]'})["names"] == ["a", "c"]
    assert TOY.validate({"names": "b"})["names"] == ["b"]
    # `papermill -r` passes raw strings: numbers, booleans and null in their plain spelling are understood
    p = TOY.validate({"size": "12", "rate": "0.25", "flag": "true", "limit": "None"})
    assert (p["size"], p["rate"], p["flag"], p["limit"]) == (12, 0.25, True, None)
    assert TOY.validate({"rate": 1})["rate"] == 1.0 and isinstance(TOY.validate({"rate": 1})["rate"], float)


def test_parameter_error_renders_as_one_line_in_a_notebook():
    with pytest.raises(ParameterError) as info:
        TOY.validate({"size": 0})
    assert info.value._render_traceback_() == [f"ParameterError: {info.value}"]


def test_machine_dependent_lookups_can_be_left_to_the_machine_that_runs():
    calls = []
    spec = TaskSpec("gpu", "", (Param("device", str, "auto", "device", kind="execution", lookup=calls.append,
                                      machine_dependent=True),), ())
    spec.validate({"device": "cuda"}, check_machine=False)
    assert calls == []
    spec.validate({"device": "cuda"})
    assert calls == ["cuda"]


def test_check_value_passes_valid_values_through():
    size = TOY.param("size")
    assert check_value("toy", size, 7) == 7
    with pytest.raises(UnknownParameterError, match="'sise'.*'size'"):
        TOY.param("sise")


# ------------------------------------------------------------------------------------------------------------
# Issue 12: every value checked in the kernel, before any work (the grid's side is in test_grid.py)
# ------------------------------------------------------------------------------------------------------------


def _cuda_here() -> bool:
    import torch

    return torch.cuda.is_available()


BAD_KERNEL_VALUES = [
    ("classification", "seed", -1, "seed=-1 must be at least 0"),
    ("classification", "max_train", 0, "max_train=0 must be at least 1"),
    ("classification", "lr", math.nan, "lr=nan must be a finite number"),
    ("classification", "image_size", True, "image_size=True must be an integer, not a bool"),
    ("classification", "image_size", 100_000, "image_size=100000 is above its maximum 1024"),
    ("classification", "max_train", 10**9, "max_train=1000000000 is above its maximum"),
    ("classification", "device", "cuda:99" if _cuda_here() else "cuda", "device="),
    ("classification", "device", "gpu", "device='gpu' does not match"),
    ("classification", "backbone", "resnet9000.nope", "backbone='resnet9000.nope'"),
    ("robustness", "epsilons", "x", "epsilons='x' item 'x' is not a number"),
    ("robustness", "epsilons", [0, 300], "epsilons=[0, 300] item 300 is above its maximum 255"),
    ("detection", "canvas_size", 5000, "canvas_size=5000 is above its maximum 1024"),
    ("detection", "eval_dataset", "cityscapess", "eval_dataset='cityscapess' is not accepted: unknown dataset"),
    ("detection", "dataset", "fashion_mnist", "dataset='fashion_mnist' is not accepted"),
    ("retrieval", "split", "../x", "split='../x' does not match"),
    ("ood", "targets", ["sklearn_digits:../x"], "targets=['sklearn_digits:../x'] item"),
]


@pytest.mark.parametrize(("task", "name", "bad", "needle"), BAD_KERNEL_VALUES)
def test_bad_values_fail_in_the_kernel_before_any_work(task, name, bad, needle, monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError(f"{task} started work before rejecting {name}={bad!r}")

    monkeypatch.setattr("bobkit.features.device.set_threads", started)  # the harness's first step after validation
    with pytest.raises(ParameterError) as info:
        get_task(task).run(**{name: bad})
    assert needle in str(info.value) and str(info.value).startswith(f"{task} parameter {name}=")


# ------------------------------------------------------------------------------------------------------------
# The harness: format-2 output, stderr, n_items, notebooks
# ------------------------------------------------------------------------------------------------------------


def _toy_body(p, execution):
    assert execution is None  # no device parameter: no torch set-up
    return {"top1": 0.75, "se/top1": 0.05, "nll": 0.4, "n_test": 80.0, "fit_seconds": 1.5, "surprise": 2.0}


def test_harness_writes_the_format_2_output_from_the_declarations(tmp_path):
    spec = TaskSpec(TOY.name, TOY.summary, (*TOY.parameters, Param("output_dir", str, None, "out", kind="execution")),
                    TOY.metrics)
    result = run_task(spec, {"size": 3, "output_dir": str(tmp_path)}, _toy_body)
    assert isinstance(result, TaskResult) and result["top1"] == 0.75 and result["se/top1"] == 0.05
    written = json.loads((tmp_path / "task_metrics.json").read_text())
    assert written == {
        "format": 2,
        "metrics": {"top1": 0.75, "nll": 0.4, "surprise": 2.0},  # undeclared: a score by its name (fallback)
        "stderr": {"top1": 0.05},
        "n_items": {"top1": 80},  # nll declares no count
        "higher_is_better": {"top1": True, "nll": False, "surprise": True},
        "primary": ["top1"],
        "setting_params": {"size": 3, "rate": 0.5, "flag": False, "mode": "fast", "limit": None, "eps": [0.0, 1.0],
                           "names": ["a"]},
        "descriptors": {"n_test": 80.0, "fit_seconds": 1.5},
    }
    assert result.undeclared() == ["surprise"]


def test_smoke_and_a_tiny_probe_report_only_declared_outputs(tmp_path):
    from bobkit.tasks import classification, smoke

    assert smoke.run(value=2, seed=1).undeclared() == []
    result = classification.run(backbone=PACKAGED, dataset="mnist5k", image_size=32, max_train=60, max_test=40,
                                device="cpu", num_threads=1, batch_size=16, output_dir=str(tmp_path))
    assert result.undeclared() == []
    output = json.loads((tmp_path / "task_metrics.json").read_text())
    assert output["primary"] == ["top1"] and output["n_items"]["top1"] == 40
    assert output["higher_is_better"]["nll"] is False and "n_train" in output["descriptors"]
    assert "threads" in output["descriptors"] and any(k.startswith("peak_") for k in output["descriptors"])
    assert output["setting_params"]["max_train"] == 60 and "backbone" not in output["setting_params"]
    assert "device" not in output["setting_params"] and "seed" not in output["setting_params"]


def test_notebook_parameters_pass_injected_unknown_names_to_run():
    from bobkit.tasks import smoke

    namespace = {
        "In": ["", "# Parameters of the smoke task (generated)\nvalue = 1.0\nseed = 0",
               '# Parameters\nvaleu = 3\nPAPERMILL_INPUT_PATH = "x.ipynb"\n', "print(1)"],
        "value": 1.0, "seed": 0, "valeu": 3, "PAPERMILL_INPUT_PATH": "x.ipynb", "unrelated": [1],
    }
    params = notebook_parameters("smoke", namespace)
    assert params == {"value": 1.0, "seed": 0, "valeu": 3}
    with pytest.raises(UnknownParameterError, match=r"'valeu' \(did you mean 'value'\?\)"):
        smoke.run(**params)


def test_a_name_added_to_the_parameters_cell_by_hand_is_caught_too():
    namespace = {"In": ["# Parameters of the smoke task (generated)\nvalue = 2.0\nsed = 4"], "value": 2.0, "sed": 4}
    assert notebook_parameters("smoke", namespace) == {"value": 2.0, "sed": 4}


def test_run_has_the_declared_signature_and_documents_every_parameter():
    from bobkit.tasks import retrieval

    signature = inspect.signature(retrieval.run)
    assert {k: p.default for k, p in signature.parameters.items()} == get_spec("retrieval").defaults()
    for p in get_spec("retrieval").parameters:
        assert f"{p.name} : " in retrieval.run.__doc__ and p.doc in retrieval.run.__doc__


def test_a_word_stands_in_for_a_number_and_bad_text_names_both():
    l2 = Param("probe_l2", float, "auto", "penalty", low=0.0, low_open=True, words=("auto",))
    assert check_value("t", l2, "auto") == "auto" and check_value("t", l2, "1e-2") == 0.01
    assert l2.type_name() == "float | 'auto'"
    with pytest.raises(ParameterError, match=r"probe_l2='aut' is not a number \(or 'auto'\)"):
        check_value("t", l2, "aut")
    with pytest.raises(ParameterError, match=r"probe_l2=0.0 must be above 0"):
        check_value("t", l2, 0.0)


def test_a_scalar_or_list_parameter_checks_every_item():
    lr = Param("lr", float, 1e-3, "rate", low=0.0, low_open=True, or_list=True)
    assert check_value("t", lr, 0.1) == 0.1 and check_value("t", lr, [1e-3, 3e-3]) == [1e-3, 3e-3]
    assert check_value("t", lr, "[1e-3, 3e-3]") == [1e-3, 3e-3]
    for bad, needle in (([1e-3, -1.0], "item -1.0 must be above 0"), ([], "needs at least one item"),
                        ([0.1, 0.1], "repeats 0.1")):
        with pytest.raises(ParameterError, match=re.escape(needle)):
            check_value("t", lr, bad)


def test_lr_lists_only_where_the_task_selects_one():
    assert check_value("classification", get_spec("classification").param("lr"), [1e-3, 1e-2]) == [1e-3, 1e-2]
    assert check_value("detection", get_spec("detection").param("lr"), [1e-3, 1e-2]) == [1e-3, 1e-2]
    for task in ("ood", "robustness"):
        with pytest.raises(ParameterError, match="lr=.*must be a number"):
            check_value(task, get_spec(task).param("lr"), [1e-3, 1e-2])


def test_item_counts_of_a_subset_override_the_declared_count(tmp_path):
    def body(p, ex):
        return {"top1": 0.5, "n_test": 80.0, "acc/pgd/1": 0.25, "se/acc/pgd/1": 0.1, "n/acc/pgd/1": 16.0}

    spec = TaskSpec(TOY.name, TOY.summary, (*TOY.parameters, Param("output_dir", str, None, "out", kind="execution")),
                    (*TOY.metrics, Metric("acc/*/*", "attacked accuracy", n_items="n_test")))
    result = run_task(spec, {"output_dir": str(tmp_path)}, body)
    assert result.n_items == {"top1": 80, "acc/pgd/1": 16}
    assert "n/acc/pgd/1" not in result.scores and "n/acc/pgd/1" not in result.descriptors
    assert result.undeclared() == []
