"""Sentences and the paper's findings: table values are escaped before they enter Markdown; the paper's stated values
come from the project's own findings file, with their source."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bobkit.analysis import findings, prose
from bobkit.analysis import scores as sc
from bobkit.analysis.errors import InsufficientDataError
from bobkit.analysis.notebook import Analysis, read_summary
from bobkit.results.schema import conform

EVIL = "<img src=x onerror=alert(1)>"


def test_md_escapes_html_and_markdown_markup():
    assert prose.md(EVIL) == "&lt;img src=x onerror=alert(1)>"
    assert "<" not in prose.md("</script><script>alert(1)</script>")
    assert prose.md("[click](javascript:alert(1))") == r"\[click\](javascript:alert(1))"
    assert prose.md("a*b `c`\nd") == r"a\*b \`c\` d"
    assert prose.md("vit_small_patch16_224.dino") == "vit_small_patch16_224.dino"  # names stay readable
    assert prose.neutralise_html("rho > 0.8 and n < 30 <b>x</b>") == "rho > 0.8 and n < 30 &lt;b>x&lt;/b>"


def _evil_board() -> pd.DataFrame:
    rows = [{"backbone": b, "display_name": name, "task": "t", "dataset": "d", "protocol": "p", "metric": "top1",
             "value": v, "higher_is_better": True, "n_items": 500}
            for b, name, v in (("x", EVIL, 0.9), ("y", "[y](javascript:alert(1))", 0.8), ("z", "z", 0.7),
                               ("w", "w", 0.6))]
    return conform(pd.DataFrame(rows))


def test_sentences_escape_backbone_names():
    text = prose.describe_leaderboard(sc.leaderboard(_evil_board(), n_boot=30))
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)>" in text
    assert r"\[y\](javascript:alert(1))" in text  # the link syntax is escaped, so no link forms


def test_analysis_say_note_and_guard_never_emit_raw_html(tmp_path, capsys):
    out = Analysis("99_xss", tmp_path, show=True)
    out.say(f"headline with {EVIL}", headline=True)
    out.note(f"a note about {EVIL}")
    with out.guard(f"section {EVIL}"):
        raise InsufficientDataError(f"backbone {EVIL} has no rows")
    printed = capsys.readouterr().out
    summary = read_summary(tmp_path)
    assert "<img" not in printed
    assert "<img" not in json.dumps(summary["headlines"])
    assert summary["headlines"] == ["headline with &lt;img src=x onerror=alert(1)>"]
    assert f"section {EVIL}" in summary["skipped"]  # the raw reason is data; it is escaped where it is shown


def test_findings_file_has_the_papers_values_and_source():
    data = findings.load_findings()
    assert "Goldblum" in data["source"]["citation"] and "NeurIPS 2023" in data["source"]["citation"]
    scale = findings.finding("scale_params")["values"]
    assert (scale["ViT"], scale["CNN"]) == (0.58, 0.35)
    assert findings.finding("scale_data")["values"] == {"ViT": 0.72, "CNN": 0.33,
                                                       "statistic": findings.finding("scale_data")["values"]["statistic"]}
    assert findings.finding("task_correlation")["values"]["threshold"] == 0.8
    text = findings.claim_text("top_overall")
    assert text.startswith("**The paper** (Goldblum et al., NeurIPS 2023;") and "ConvNeXt-Base" in text
    for item in data["findings"].values():
        assert item["claim"] and item["where"] and item["notebook"]
    with pytest.raises(KeyError, match="scale_params"):
        findings.finding("scale_parms")


def test_findings_quote_only_the_paper_and_mark_what_is_assumed():
    ssl = findings.finding("ssl_vs_supervised")
    # the paper's exception is part of the finding
    assert "detection and segmentation" in ssl["claim"] and "decisive edge" in ssl["claim"]
    # the quoted words are the abstract's, word for word
    assert ssl["quote"] == ("in apples-to-apples comparisons on the same architectures and similarly sized pretraining "
                            "datasets, we find that SSL backbones are highly competitive")
    calibration = findings.finding("calibration_tracks_accuracy")
    assert "ECE" not in calibration["stated"] and "expected calibration error" not in calibration["claim"]
    assert "ECE" in calibration["assumed"] and "not stated" in calibration["assumed"]
    text = findings.claim_text("calibration_tracks_accuracy")
    assert "Assumed here, not stated by the paper:" in text and "ECE" in text
    for finding_id, item in findings.load_findings()["findings"].items():  # nothing assumed poses as stated
        assert "assumed" not in str(item["stated"]).lower(), finding_id


def test_finding_answers_and_agreement():
    diff = {"diff": 0.2, "ci_low": 0.05, "ci_high": 0.35, "rho_a": 0.6, "rho_b": 0.4, "n_a": 20, "n_b": 30}
    answer = findings.difference_finding("scale_params", diff)
    assert answer["shown"] and answer["agreement"] == "agrees" and answer["paper_value"] == pytest.approx(0.23)
    answer = findings.difference_finding("scale_params", {**diff, "ci_low": -0.3, "ci_high": -0.1, "diff": -0.2})
    assert answer["agreement"] == "disagrees"
    # the overview's case: an interval holding the paper's side and zero is unclear, as its legend says, not "x"
    straddles = findings.difference_finding("scale_params", {**diff, "diff": 0.08, "ci_low": -0.02, "ci_high": 0.17})
    assert straddles["agreement"] == "unclear"
    # on the paper's side but short of its value: agrees on the direction, and the statement says the value is out
    short = findings.difference_finding("scale_params", {**diff, "diff": 0.08, "ci_low": 0.02, "ci_high": 0.17})
    assert short["agreement"] == "agrees" and "outside this interval" in short["statement"]
    assert findings.agreement(0.08, -0.02, 0.17, 0.23) == "unclear"
    assert findings.agreement(0.0, -0.1, 0.1, 0.0) == "agrees"  # a paper value of zero: inside the interval
    missing = findings.difference_finding("scale_params", None, "it has 0 pretrained ViT backbone(s)")
    assert not missing["shown"] and missing["statement"].startswith("This table cannot show the paper's finding")
    assert findings.threshold_finding("task_correlation", 0.9, 0.85, 0.95, 12, "rho")["agreement"] == "agrees"
    assert findings.threshold_finding("task_correlation", 0.5, 0.2, 0.7, 12, "rho")["agreement"] == "disagrees"
    assert not findings.threshold_finding("task_correlation", 0.5, float("nan"), float("nan"), 3, "rho")["shown"]


def test_top_k_finding_says_so_when_the_table_cannot_show_it(tmp_path):
    board = sc.leaderboard(_evil_board(), n_boot=20)
    answer = findings.top_k_finding("top_overall", board, _evil_board())
    assert not answer["shown"] and "1 task" in answer["statement"]
    out = Analysis("99_findings", tmp_path, show=False)
    out.finding("top_overall", **answer)
    recorded = read_summary(tmp_path)["findings"]["top_overall"]
    assert recorded["shown"] is False and recorded["agreement"] is None
    with pytest.raises(KeyError):
        out.finding("no_such_finding", shown=False)


def test_family_gain_leaves_random_init_controls_out():
    comparison = pd.DataFrame({
        "backbone": ["cnn_a", "cnn_b", "cnn_c", "vit_rand", "vit_a", "vit_b", "swin_a"],
        "family": ["CNN", "CNN", "CNN", "ViT", "ViT", "ViT", "hierarchical-ViT"],
        "method_kind": ["supervised", "SSL", "supervised", "random", "supervised", "SSL", "supervised"],
        "delta": [0.01, 0.02, 0.03, -0.50, 0.10, 0.12, 0.14]})
    answer = findings.family_gain_finding("finetune_vs_linear_probe", comparison, a="linear_probe", b="finetune",
                                          vit_families=["ViT", "hierarchical-ViT"], n_boot=200)
    assert answer["shown"] and answer["value"] == pytest.approx(0.12 - 0.02)  # the untrained ViT is not counted
    assert answer["n"] == 6 and answer["agreement"] == "agrees" and answer["ci_low"] > 0
    only_random = comparison[comparison["family"] == "CNN"].pipe(
        lambda f: pd.concat([f, comparison[comparison["backbone"] == "vit_rand"]]))
    missing = findings.family_gain_finding("finetune_vs_linear_probe", only_random, a="linear_probe",
                                           b="finetune", vit_families=["ViT"], n_boot=50)
    assert not missing["shown"]
    assert missing["reason"] == "it has no pretrained ViT backbone run under both linear_probe and finetune"


def test_family_table_sets_random_init_controls_apart():
    comparison = pd.DataFrame({"family": ["CNN", "CNN", "ViT", None], "delta": [0.1, -0.4, -0.5, 0.2],
                               "method_kind": ["supervised", "random", "random", "SSL"]})
    groups = findings.family_or_control(comparison)
    assert list(groups) == ["CNN", "CNN, random init", "ViT, random init", "unknown"]
    assert list(findings.family_or_control(comparison.drop(columns="method_kind"))) == ["CNN", "CNN", "ViT", "unknown"]


def test_plain_text_undoes_markdown_escapes():
    for value in ["a*b [x] `c` \\ d", "<img src=x onerror=alert(1)>", "vit_small_patch16_224.dino"]:
        assert prose.plain_text(prose.md(value)) == value
    assert prose.plain_text(f"**The paper:** {prose.md('x*y')}") == "The paper: x*y"
