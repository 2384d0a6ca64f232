"""One model's scores on the held-out data and the benchmarks: what the report and the verdict read."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelResult:
    name: str
    spec: str
    retrieval: dict[str, float]
    boxes: dict[str, dict[str, float]] = field(default_factory=dict)  # region path → top1/top5
    fgovd: dict[str, dict] = field(default_factory=dict)  # region path → hard/medium/easy + by_attribute
    top_labels: list[str] = field(default_factory=list)  # per box: the first region path's best class
    benchmarks: dict[str, dict[str, float]] = field(default_factory=dict)  # name → R@k, counts
    pooler: dict[str, float] = field(default_factory=dict)  # β-CLIP's pooler: eval/pooler.py

    def headline(self) -> str:
        scored = {"": self.retrieval} if self.retrieval else {}
        parts = [
            f"{name + ' ' if name else ''}I2T R@1 {r['i2t_R@1']:.1f}, T2I R@1 {r['t2i_R@1']:.1f}"
            for name, r in {**scored, **self.benchmarks}.items()
            if "i2t_R@1" in r
        ]
        parts += [
            f"{name} ({r['region_path']}) hard {r['hard']:.1f}"
            for name, r in self.benchmarks.items()
            if "hard" in r and "region_path" in r
        ]
        if "roi" in self.boxes:
            parts.append(f"box top-1 {self.boxes['roi']['top1']:.1f}")
        if "roi" in self.fgovd and "hard" in self.fgovd["roi"]:
            parts.append(f"FG-OVD hard {self.fgovd['roi']['hard']:.1f}")
        return ", ".join(parts)
