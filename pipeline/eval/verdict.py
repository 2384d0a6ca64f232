"""Each model against the baseline it must not lose to, read off the numbers.

Both papers claim region-level gains without giving up whole-image retrieval; against an equally
fine-tuned ``clip`` that is two questions (docs/evaluation.md, "The demo"):

* kept global retrieval: mean R@1 (I2T and T2I) at most ``RETRIEVAL_TOLERANCE`` points below;
* improved regions: box top-1 and FG-OVD-style hard both higher, along the RoI path (β-CLIP's and
  the box-classification protocol's);

and for a model with β-CLIP's pooler a third: does its embedding depend on the query (pooled cosine
and attention entropy both at most ``POOLER_LIMIT``; 1 is a mean pool, eval/pooler.py).
"""

from __future__ import annotations

from pipeline.eval.result import ModelResult

RETRIEVAL_TOLERANCE = 2.0
POOLER_LIMIT = 0.95
PATH = "roi"


def mean_r1(retrieval: dict[str, float]) -> float:
    return (retrieval["i2t_R@1"] + retrieval["t2i_R@1"]) / 2


def verdicts(results: list[ModelResult], baseline: str) -> dict[str, dict]:
    """{model name: its differences from ``baseline`` and the yes/no answers} for every other model
    scored on the same held-out data; {} when the baseline is not among them."""
    base = next((r for r in results if r.name == baseline and r.retrieval), None)
    if base is None:
        return {}
    out = {}
    for r in results:
        if r is base or not r.retrieval:
            continue
        v: dict = {"mean_R@1": round(mean_r1(r.retrieval) - mean_r1(base.retrieval), 2)}
        v["kept_retrieval"] = v["mean_R@1"] >= -RETRIEVAL_TOLERANCE
        if PATH in r.boxes and PATH in base.boxes:
            v["box_top1"] = round(r.boxes[PATH]["top1"] - base.boxes[PATH]["top1"], 2)
            gains = [v["box_top1"]]
            if "hard" in r.fgovd.get(PATH, {}) and "hard" in base.fgovd.get(PATH, {}):
                v["fgovd_hard"] = round(r.fgovd[PATH]["hard"] - base.fgovd[PATH]["hard"], 2)
                gains.append(v["fgovd_hard"])
            v["improved_regions"] = all(g > 0 for g in gains)
        if r.pooler:
            v["query_specific_pooler"] = (
                r.pooler["pooled_cosine"] <= POOLER_LIMIT and r.pooler["attention_entropy"] <= POOLER_LIMIT
            )
        out[r.name] = v
    return out


def verdict_table(verdict: dict[str, dict], baseline: str) -> list[tuple]:
    """The report's section: one row per model, differences in points and the answers."""
    if not verdict:
        return []
    note = (
        f"Differences from {baseline} in points. Kept retrieval: mean R@1 at most "
        f"{RETRIEVAL_TOLERANCE:g} below; improved regions: box top-1 and FG-OVD-style hard both higher "
        f"({PATH} path); query-specific pooler: pooled cosine and attention entropy both at most "
        f"{POOLER_LIMIT:g}."
    )
    header = [
        "checkpoint",
        "mean R@1",
        "box top-1",
        "FG-OVD hard",
        "kept retrieval",
        "improved regions",
        "query-specific pooler",
    ]
    rows = [
        [
            name,
            *(v.get(k, "") for k in ("mean_R@1", "box_top1", "fgovd_hard")),
            *(_answer(v.get(k)) for k in ("kept_retrieval", "improved_regions", "query_specific_pooler")),
        ]
        for name, v in verdict.items()
    ]
    return [(f"Against {baseline}", note, header, rows)]


def _answer(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "no")
