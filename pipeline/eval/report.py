"""The report: ``metrics.json`` (everything), ``report.md`` and ``report.html`` (a table per task),
and PNG plots — training curves of the runs given, FG-OVD accuracy per attribute, and example
images with their boxes and each model's top label."""

from __future__ import annotations

import html
import io
import json
import math
from dataclasses import asdict
from pathlib import Path

from matplotlib.figure import Figure  # the object API: no pyplot state, no display backend
from matplotlib.patches import Rectangle
from PIL import Image

from pipeline.config import to_dict
from pipeline.eval.config import EvalConfig
from pipeline.eval.data import EvalImage
from pipeline.eval.model import REGION_PATHS
from pipeline.eval.result import ModelResult
from pipeline.eval.verdict import verdict_table, verdicts


def write_report(
    out: Path,
    cfg: EvalConfig,
    data: dict | None,
    results: list[ModelResult],
    images: list[EvalImage],
    lineage: dict,
) -> Path:
    """``data``: the held-out dataset's summary (None: benchmarks only). ``metrics.json`` has every
    model's scores under ``models``; with one checkpoint, its benchmark scores also as
    ``benchmarks: {NAME: {metric: value}}``."""
    out.mkdir(parents=True, exist_ok=True)
    everything = {
        "data": data,
        "config": to_dict(cfg),
        "lineage": lineage,
        "models": {
            r.name: {k: v for k, v in asdict(r).items() if k not in ("name", "top_labels")} for r in results
        },
    }
    if len(results) == 1 and results[0].benchmarks:
        everything["benchmarks"] = results[0].benchmarks
    verdict = verdicts(results, cfg.baseline)
    if verdict:
        everything["against_baseline"] = {"baseline": cfg.baseline, "models": verdict}
    (out / "metrics.json").write_text(json.dumps(everything, indent=1))
    plots = [
        p
        for p in (
            _training_curves(out, results),
            _attribute_plot(out, results),
            _examples_plot(out, results, images, cfg.examples),
        )
        if p
    ]
    listed = [("Checkpoints", "", ["checkpoint", "spec"], [[r.name, r.spec] for r in results])]
    sections = (_tables(cfg, data, results) if data else listed) + _benchmark_tables(cfg, results)
    sections += _pooler_table(results) + verdict_table(verdict, cfg.baseline)
    (out / "report.md").write_text(_markdown(sections, plots, cfg.note))
    (out / "report.html").write_text(_html(sections, plots, cfg.note))
    return out


# ---------------------------------------------------------------------------------------------
# Tables: (title, note, header, rows), rendered as markdown and HTML


def _benchmark_tables(cfg: EvalConfig, results: list[ModelResult]) -> list[tuple]:
    """A table per benchmark, shaped like the papers' (I2T, then T2I, R@k as percentages; FG-OVD:
    top-1 accuracy per file, a row per checkpoint and region path)."""
    sections = []
    for entry in cfg.benchmarks:
        name, path = entry.split("=", 1)
        if name == "fgovd":
            sections.append(_fgovd_table(path, results))
            continue
        scores = [r.benchmarks[name] for r in results]
        keys = [k for k in scores[0] if "_R@" in k]
        note = f"{path}: {scores[0]['images']} images, {scores[0]['captions']} captions."
        rows = [[r.name, *(s[k] for k in keys)] for r, s in zip(results, scores)]
        sections.append((f"{name} retrieval (%)", note, ["checkpoint", *keys], rows))
    return sections


def _fgovd_table(path: str, results: list[ModelResult]) -> tuple:
    scored = [(r.name, s) for r in results for k, s in r.benchmarks.items() if k.split("@")[0] == "fgovd"]
    files = [k for k in scored[0][1] if k not in ("boxes", "region_path")]
    note = (
        f"{path}: {scored[0][1]['boxes']} boxes; each against its true caption and the benchmark's "
        "negatives. Region paths: "
        + "; ".join(f"{p}: {REGION_PATHS[p]}" for p in dict.fromkeys(s["region_path"] for _, s in scored))
        + "."
    )
    rows = [[name, s["region_path"], *(s.get(f, math.nan) for f in files)] for name, s in scored]
    return ("fgovd top-1 accuracy (%)", note, ["checkpoint", "region path", *files], rows)


def _tables(cfg: EvalConfig, data: dict, results: list[ModelResult]) -> list[tuple]:
    num_classes = data["classes"]
    summary = (
        f"{data['path']}: {data['images']} images, {data['boxes']} labelled boxes, "
        f"{num_classes} distinct labels."
    )
    sections = [("Data", summary, ["checkpoint", "spec"], [[r.name, r.spec] for r in results])]
    chance = data["chance"]
    keys = list(results[0].retrieval)
    sections.append(
        (
            "Long-caption retrieval (%)",
            "Global image embedding vs the embedding of the whole caption; one caption per image.",
            ["checkpoint", *keys],
            [[r.name, *(r.retrieval[k] for k in keys)] for r in results]
            + [["chance", *(chance["retrieval"][k] for k in keys)]],
        )
    )
    for view, what in REGION_PATHS.items():
        rows = [[r.name, r.boxes[view]["top1"], r.boxes[view]["top5"]] for r in results if view in r.boxes]
        if rows:
            sections.append(
                (
                    f"Box classification (%), regions from {what}",
                    f'Each box against all {num_classes} labels as "{cfg.prompt}".',
                    ["checkpoint", "top-1", "top-5"],
                    rows + [["chance", chance["boxes"]["top1"], chance["boxes"]["top5"]]],
                )
            )
        rows = [
            [
                r.name,
                *(r.fgovd[view].get(d, math.nan) for d in ("hard", "medium", "easy")),
                *(r.fgovd[view]["by_attribute"].get(g, math.nan) for g in cfg.attributes),
            ]
            for r in results
            if view in r.fgovd
        ]
        if rows:
            note = (
                f"The true label vs up to {cfg.num_negatives} negatives changing 1 (hard), 2 (medium) or 3 "
                "(easy) attributes; per attribute: true vs each single swap of it (chance 50)."
            )
            sections.append(
                (
                    f"FG-OVD-style (%), regions from {what}",
                    note,
                    ["checkpoint", "hard", "medium", "easy", *cfg.attributes],
                    rows
                    + [
                        [
                            "chance",
                            *(chance["fgovd"].get(d, math.nan) for d in ("hard", "medium", "easy")),
                            *[50.0] * len(cfg.attributes),
                        ]
                    ],
                )
            )
    return sections


def _pooler_table(results: list[ModelResult]) -> list[tuple]:
    rows = [[r.name, *r.pooler.values()] for r in results if r.pooler]
    if not rows:
        return []
    note = (
        "Each image pooled with each of its texts (caption, sentences, phrases). Pooled cosine 1 and "
        "attention entropy 1 mean a fixed mean pool whatever the query; text cosine is how alike the "
        "queries themselves are; peak attention is the largest weight × the number of patches."
    )
    header = ["checkpoint", *next(r.pooler for r in results if r.pooler)]
    return [("β-CLIP pooler: does it depend on the query?", note, header, rows)]


def _cell(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _markdown(sections: list[tuple], plots: list[str], note: str) -> str:
    lines = ["# Evaluation report", "", *([note, ""] if note else [])]
    for title, note, header, rows in sections:
        lines += [
            f"## {title}",
            "",
            note,
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(map(_cell, row)) + " |" for row in rows),
            "",
        ]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _html(sections: list[tuple], plots: list[str], note: str) -> str:
    body = ["<h1>Evaluation report</h1>", *([f"<p>{html.escape(note)}</p>"] if note else [])]
    for title, note, header, rows in sections:
        body += [
            f"<h2>{html.escape(title)}</h2>",
            f"<p>{html.escape(note)}</p>",
            "<table>",
            "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>",
            *("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows),
            "</table>",
        ]
    body += [f'<h2>{html.escape(p)}</h2><img src="{html.escape(p)}">' for p in plots]
    style = (
        "body{font-family:sans-serif;max-width:70em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}img{max-width:100%}"
    )
    return (
        f"<!doctype html><meta charset=utf-8><title>Evaluation report</title><style>{style}</style>\n"
        + "\n".join(body)
        + "\n"
    )


# ---------------------------------------------------------------------------------------------
# Plots


def _training_curves(out: Path, results: list[ModelResult]) -> str | None:
    """Total loss and the global contrastive term (shared by every objective) of each run folder."""
    logs = {r.name: Path(r.spec) / "metrics.jsonl" for r in results}
    runs = {name: path for name, path in logs.items() if path.exists()}
    if not runs:
        return None
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for name, path in runs.items():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        steps = [row["step"] for row in rows]
        axes[0].plot(steps, [row["loss"] for row in rows], label=name)
        axes[1].plot(steps, [row["clip"] for row in rows], label=name)
    for ax, title in zip(axes, ("total loss", "global contrastive term (clip)")):
        ax.set(title=title, xlabel="step")
        ax.legend()
    return _save(fig, out / "training_curves.png")


def _attribute_plot(out: Path, results: list[ModelResult]) -> str | None:
    scored = [r for r in results if "roi" in r.fgovd and r.fgovd["roi"]["by_attribute"]]
    if not scored:
        return None
    groups = list(scored[0].fgovd["roi"]["by_attribute"])
    width = 0.8 / len(scored)
    fig = Figure(figsize=(2 + 1.5 * len(groups), 4))
    ax = fig.subplots()
    for i, r in enumerate(scored):
        ax.bar(
            [g + i * width for g in range(len(groups))],
            [r.fgovd["roi"]["by_attribute"].get(g, math.nan) for g in groups],
            width,
            label=r.name,
        )
    ax.axhline(50, color="gray", linestyle="--", linewidth=1)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups)
    ax.set(ylabel="true label preferred (%)", ylim=(0, 100), title="FG-OVD pairs by swapped attribute (RoI)")
    ax.legend(fontsize="small")
    return _save(fig, out / "fgovd_by_attribute.png")


def _examples_plot(out: Path, results: list[ModelResult], images: list[EvalImage], count: int) -> str | None:
    """Rows: the first images with boxes; columns: models. Each box with the model's top label,
    green when it is the true label."""
    offsets, start = [], 0
    for im in images:
        offsets.append(start)
        start += len(im.boxes)
    shown = [i for i, im in enumerate(images) if im.boxes][:count]
    if not shown or not results[0].top_labels:
        return None
    fig = Figure(figsize=(3.2 * len(results), 3.2 * len(shown)))
    axes = fig.subplots(len(shown), len(results), squeeze=False)
    for row, i in enumerate(shown):
        im = images[i]
        picture = Image.open(io.BytesIO(im.jpg)).convert("RGB")
        for col, r in enumerate(results):
            ax = axes[row][col]
            ax.imshow(picture)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(r.name)
            for k, (box, label) in enumerate(zip(im.boxes, im.labels)):
                guess = r.top_labels[offsets[i] + k] if r.top_labels else ""
                colour = "lime" if guess == label.lower() else "red"
                x0, y0, x1, y1 = box
                ax.add_patch(
                    Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.5)
                )
                ax.text(
                    x0,
                    y0,
                    guess,
                    color="black",
                    fontsize=6,
                    va="bottom",
                    bbox={"facecolor": colour, "alpha": 0.7, "pad": 1, "linewidth": 0},
                )
    return _save(fig, out / "examples.png")


def _save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name
