"""The latest benchmark table, generated from the JSON files in ``benchmarks/results/``.

    python benchmarks/make_table.py [--dir benchmarks/results] [--write-readme]

Prints a Markdown table (figure, device, measured, target, ok); ``--write-readme`` also replaces the table
between the ``<!-- table:start -->`` / ``<!-- table:end -->`` markers of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
START, END = "<!-- table:start -->", "<!-- table:end -->"
Row = tuple[str, str, str, str, str]


def _device(d: dict[str, Any]) -> str:
    """GPU model, or CPU model and threads, from a result's ``machine`` block (other schemas tolerated)."""
    m = d.get("machine")
    if not isinstance(m, dict):
        return ""
    dev = str(d.get("device", m.get("device", "cpu")))
    gpus = m.get("gpus") or []
    if dev.startswith("cuda") or (gpus and "device" not in d):
        return m.get("gpu") or (gpus[0] if gpus else "GPU")
    cpu = str(m.get("cpu") or m.get("cpu_model") or "CPU")
    cpu = re.sub(r"\(R\)|\(TM\)|CPU|@.*", "", cpu).replace("Intel Xeon", "Xeon").strip()
    threads = m.get("torch_threads") or m.get("cpu_count")
    return f"{cpu}, {threads} threads" if threads else cpu


def _ok(value: float | None, target: float, higher: bool = True) -> str:
    if value is None:
        return ""
    return "yes" if (value >= target if higher else value <= target) else "**no**"


def _mode(ex: dict[str, Any] | None) -> str:
    if not ex:
        return ""
    return f"{ex.get('precision')}{'+channels_last' if ex.get('channels_last') else ''}"


def feature_throughput(d: dict[str, Any]) -> list[Row]:
    cuda = str(d.get("device", "cpu")).startswith("cuda")
    target = 0.9 if cuda else 0.95
    what = (f"extraction vs raw timm loop: {d['backbone'].split('.')[0]}, {d['images']} imgs @ {d['image_size']} px, "
            f"{_mode(d.get('execution'))}")
    rows = [(what, _device(d), f"{d['bobkit_images_per_s']:.0f} vs {d['raw_timm_images_per_s']:.0f} img/s = "
             f"**{d['bobkit_over_raw']:.2f}x**", f">= {target}x", _ok(d["bobkit_over_raw"], target))]
    rows.append(("second extraction from cache / first", _device(d),
                 f"{d['cache_hit_s'] * 1e3:.1f} ms / {d['first_extraction_s']:.1f} s = "
                 f"**{d['cache_hit_over_first']:.4f}x**", "<= 0.1x", _ok(d["cache_hit_over_first"], 0.1, False)))
    return rows


def flops_utilization(d: dict[str, Any]) -> list[Row]:
    peak = d["peak"]
    rows = []
    for m in d["models"]:
        compiled = ""
        if "compiled_fraction_of_peak" in m:
            compiled = f"; compiled {100 * m['compiled_fraction_of_peak']:.1f}%"
        rows.append((
            f"FLOP/s utilisation: {m['backbone'].split('.')[0]} @ {d['image_size']} px, "
            f"{_mode({**d.get('execution', {}), 'channels_last': m.get('channels_last', False)})}",
            _device(d),
            f"{m['images_per_s']:.0f} img/s x {m['gflops_per_image']:.2f} GFLOP = {m['achieved_tflops_per_s']:.2f} "
            f"TFLOP/s = **{100 * m['fraction_of_peak']:.1f}%** of measured {peak['precision']} peak "
            f"{peak['tflops_per_s']:.1f} TFLOP/s (model alone {100 * m['model_only_fraction_of_peak']:.1f}%"
            f"{compiled})", "reported", ""))
    return rows


def execution_modes(d: dict[str, Any]) -> list[Row]:
    rows = []
    for m in d["models"]:
        modes = ", ".join(f"{k} {v['images_per_s']:.0f}" for k, v in m["modes"].items())
        rows.append((f"execution modes: {m['backbone'].split('.')[0]} @ {d['image_size']} px (img/s)", _device(d),
                     f"{modes}; fastest **{m['fastest']}** ({m['fastest_over_fp32']:.2f}x fp32)",
                     "defaults chosen from this", ""))
    return rows


def probe_solver(d: dict[str, Any]) -> list[Row]:
    """Per L-BFGS setting and group of pairs (pretrained / random-init): speedup over SGD and top-1 difference."""
    if "pairs" not in d:
        return _probe_solver_single(d)
    labels = {"lbfgs_default": "default", "lbfgs_unpreconditioned": "default budget, no preconditioner",
              "lbfgs_100": "objective's optimum"}
    rows = []
    summary = d["summary"]
    for name, label in labels.items():
        setting = summary.get(name)
        if not setting:
            continue
        for group in ("pretrained", "random_init"):
            g = setting.get(group)
            if not g:
                continue
            equal = g["pairs_equal_or_better"] == g["pairs"]
            what = (f"linear probe, L-BFGS {setting['max_iter']} its, preconditioner rank "
                    f"{setting['precondition_rank']} ({label}) vs SGD {d['sgd_epochs']} epochs: {g['pairs']} "
                    f"{group.replace('_', '-')} backbone x dataset pairs")
            if name == "lbfgs_default" and group == "pretrained":
                what += (f" (budgets picked on validation: {summary['validation_chosen']}, median -> "
                         f"{summary['recommended_max_iter']})")
            rows.append((what, _device(d),
                         f"speedup median **{g['speedup_median']:.1f}x**, min {g['speedup_min']:.1f}x; top-1 diff "
                         f"mean {100 * g['top1_diff_mean']:+.2f} pt, worst {100 * g['top1_diff_min']:+.1f} pt; "
                         f"{g['pairs_equal_or_better']}/{g['pairs']} equal or better",
                         ">= 10x at equal or better acc." if name == "lbfgs_default" else "reference",
                         "" if name != "lbfgs_default" else _ok(g["speedup_min"], 10) if equal else "**no** (acc.)"))
    return rows


def _probe_solver_single(d: dict[str, Any]) -> list[Row]:
    """Files from before the multi-pair study: one pair, L-BFGS at the default of the time (100 iterations)."""
    s = d["solvers"]
    p, n = s["sgd"]["top1"], d["n_test"]
    se = (p * (1 - p) / n) ** 0.5
    base = (f"linear probe, {d['n_train']} x {d['dim']} features ({d['backbone'].split('.')[0]}): "
            f"SGD {d['sgd_epochs']} epochs top-1 {p:.3f} in {s['sgd']['seconds']:.2f} s")
    default = s["lbfgs_default"]
    rows = [(f"{base}; L-BFGS {default.get('max_iter', 100)} its (default then)", _device(d),
             f"top-1 {default['top1']:.3f} ({100 * (default['top1'] - p):+.1f} pt; SE {100 * se:.1f}) in "
             f"{default['seconds']:.3f} s = **{s['sgd']['seconds'] / default['seconds']:.1f}x** faster",
             ">= 10x at equal or better acc.",
             _ok(s["sgd"]["seconds"] / default["seconds"], 10) if default["top1"] >= p - se else "**no** (acc.)")]
    today = _current_probe_default()
    for b in d.get("budget_sweep", []):
        if b["max_iter"] == today != default.get("max_iter", 100):
            speed = s["sgd"]["seconds"] / b["seconds"]
            rows.append((f"{base}; L-BFGS {today} its, unpreconditioned (today's budget; that run's budget sweep)", _device(d),
                         f"top-1 {b['test_top1']:.3f} ({100 * (b['test_top1'] - p):+.1f} pt; SE {100 * se:.1f}) in "
                         f"{b['seconds']:.3f} s = **{speed:.1f}x** faster", ">= 10x at equal or better acc.",
                         _ok(speed, 10) if b["test_top1"] >= p - se else "**no** (acc.)"))
    return rows


def _current_probe_default() -> int | None:
    """The probe's iteration budget in the tasks' PARAMETERS today (None when bobkit is not importable)."""
    try:
        from bobkit.tasks.classification import PARAMETERS
    except ImportError:
        return None
    return int(PARAMETERS["probe_max_iter"])


def cache_reuse(d: dict[str, Any]) -> list[Row]:
    f16 = d["storage"]["float16"]
    return [("compact float16 feature storage vs float32", _device(d),
             f"{d['float16_bytes_ratio']:.2f}x bytes, max rel. error {f16['max_rel_error_vs_float32']:.1e}, "
             f"{100 * f16['same_test_predictions']:.1f}% same probe predictions; hit "
             f"{d['cache_hit_over_first']:.4f}x first", "~0.5x bytes", _ok(d["float16_bytes_ratio"], 0.51, False))]


def memory(d: dict[str, Any]) -> list[Row]:
    gpu = f", GPU peak {d['peak_gpu_mb']:.0f} MiB" if "peak_gpu_mb" in d else ""
    return [(f"peak memory, {d['images']} imgs @ {d['image_size']} px ({d['model'].split('.')[0]})", _device(d),
             f"RSS +{d['rss_growth_mb']:.0f} MiB vs {d['all_float_images_would_need_mb'] / 1024:.1f} GiB if all "
             f"images were held{gpu}; {d['images_per_s']:.0f} img/s", "never all images at once",
             _ok(d["rss_growth_over_all_float_images"], 0.25, False))]


def finetune_step(d: dict[str, Any]) -> list[Row]:
    s = d["settings"]
    half = next(k for k in s if k != "fp32" and "ckpt" not in k)
    key = "peak_gpu_mb" if "peak_gpu_mb" in s["fp32"] else "peak_rss_mb"
    return [(f"fine-tuning {d['backbone'].split('.')[0]}, batch {d['batch_size']} @ {d['image_size']} px",
             _device(d),
             f"fp32 {s['fp32']['images_per_s']:.0f}, {half} {s[half]['images_per_s']:.0f}, +grad ckpt "
             f"{s[half + '+grad_ckpt']['images_per_s']:.0f} img/s; {key} {s['fp32'][key]:.0f} / {s[half][key]:.0f}"
             f" / {s[half + '+grad_ckpt'][key]:.0f} MiB", "reported", "")]


def demo_walltime(d: dict[str, Any]) -> list[Row]:
    return [(f"`bob run {d['params']}` fresh / resumed", _device(d),
             f"{d['fresh_run_s'] / 60:.1f} min / {d['resume_run_s']:.1f} s; {d['complete']} of {d['cells']} "
             f"cells complete, {d['failed']} failed", "reported", "" if not d["failed"] else "**no**")]


def extraction_peak(d: dict[str, Any]) -> list[Row]:
    """Per backbone: the raw timm loop and bobkit at each batch, compiled variants, the model-alone ceiling."""
    peak = d["peak"]
    rows = []
    for m in d["models"]:
        batches = "; ".join(f"batch {b}: raw {100 * v['raw']['fraction_of_peak']:.1f}% / bobkit "
                            f"{100 * v['bobkit']['fraction_of_peak']:.1f}%" for b, v in m["batches"].items())
        compiled = "".join(f"; compiled ({k[len('compiled_'):]}) {100 * m[k]['fraction_of_peak']:.1f}%"
                           for k in m if k.startswith("compiled_"))
        attention = "" if m.get("fused_attention") is None else (
            f"; fused attention {'on' if m['fused_attention_before'] else 'switched on'}")
        best = m["batches"][str(m["best_batch"])]["bobkit"] if str(m["best_batch"]) in m["batches"] else {}
        ok = _ok(best.get("fraction_of_peak"), 0.6) if m["backbone"].startswith("vit_base") else ""
        rows.append((f"extraction near the peak: {m['backbone'].split('.')[0]} @ {d['image_size']} px, "
                     f"{_mode(d.get('execution'))} (% of measured {peak['precision']} peak "
                     f"{peak['tflops_per_s']:.1f} TFLOP/s)", _device(d),
                     f"{batches}{compiled}; model alone {100 * m['model_only']['fraction_of_peak']:.1f}%{attention}",
                     ">= 60% (ViT-B)" if ok else "reported", ok))
    return rows


def plan_throughput(d: dict[str, Any]) -> list[Row]:
    archs = d.get("architectures", {})
    listed = ", ".join(f"{k} {v['images_per_s']:.0f}" for k, v in list(archs.items())[:6])
    more = f" and {len(archs) - 6} more" if len(archs) > 6 else ""
    return [(f"`bob plan` throughput table ({d.get('name')}): {len(archs)} architectures (img/s)", _device(d),
             f"{listed}{more}; train/forward {d.get('train_over_forward', 0):.2f}", "recorded", "")]


def training_input(d: dict[str, Any]) -> list[Row]:
    loaders = ", ".join(f"{r['workers']} worker(s) {r['images_per_s']:.0f} img/s wall, "
                        f"{r['images_per_worker_cpu_s']:.0f} per worker CPU-s" for r in d["loader"])
    gpus = "; ".join(f"{k} {v['finetune_images_per_s']:.0f} img/s ({v['source']}) -> {v['cores_needed']:.0f} cores"
                     for k, v in d["gpu"].items())
    return [(f"training input @ {d['image_size']} px, JPEG ~500x375, recipe {d['recipe'].get('auto_augment')} "
             f"+ erasing {d['recipe'].get('re_prob')}", _device(d),
             f"**{d['images_per_s_per_core']:.0f} img/s per core** (decode {1e3 * d['per_image_cpu']['decode_s']:.1f}"
             f" ms + augment {1e3 * d['per_image_cpu']['augment_s']:.1f} ms); {loaders}; one H100 fine-tuning: "
             f"{gpus}", "reported", "")]


FORMATTERS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "feature_throughput": feature_throughput, "flops_utilization": flops_utilization,
    "execution_modes": execution_modes, "probe_solver": probe_solver, "cache_reuse": cache_reuse,
    "memory": memory, "finetune_step": finetune_step, "demo_walltime": demo_walltime,
    "extraction_peak": extraction_peak, "plan_throughput": plan_throughput, "training_input": training_input,
}


def rows_from(folder: Path) -> list[Row]:
    rows: list[Row] = []
    for path in sorted(folder.glob("*.json"), key=lambda p: (p.stem.endswith("-cuda"), p.stem)):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        name = data.get("benchmark", path.stem.split("-")[0])
        fmt = FORMATTERS.get(name)
        if fmt is None:  # another engineer's benchmark: name it, the file has the details
            rows.append((f"{name} (see `{path.name}`)", _device(data), "", "", ""))
            continue
        try:
            rows.extend(fmt(data))
        except (KeyError, TypeError, ValueError, StopIteration) as err:
            rows.append((f"{name}: unreadable ({type(err).__name__}: {err})", path.name, "", "", ""))
    return rows


def table(folder: Path) -> str:
    lines = ["| figure | device | measured | target | ok |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows_from(folder)]
    return "\n".join(lines)


def write_readme(text: str, readme: Path = HERE / "README.md") -> None:
    doc = readme.read_text()
    if START not in doc or END not in doc:
        raise SystemExit(f"{readme} has no {START} ... {END} markers")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(HERE / "results"))
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args(argv)
    text = table(Path(args.dir))
    if args.write_readme:
        write_readme(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
