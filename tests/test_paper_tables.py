"""scripts/paper_tables.py: the generated held-out set written in Urban1k's and FG-OVD's published
layouts, read back by the benchmark readers, with negatives that change exactly what they say."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # a script's module

from paper_tables import ATTRIBUTES, write_layouts

from pipeline.eval.benchmarks import read_benchmark
from pipeline.synthetic import SyntheticConfig, write_corpus


def _attributes(caption: str) -> dict[str, str]:
    words = caption.rstrip(".").split()
    return {group: next(w for w in words if w in values) for group, values in ATTRIBUTES.items()}


def test_the_demo_set_in_the_papers_layouts(tmp_path):
    write_corpus(str(tmp_path / "corpus"), SyntheticConfig(num_records=8, split="heldout"))
    urban, fgovd = write_layouts(tmp_path / "corpus/records.jsonl", tmp_path / "out")
    retrieval = read_benchmark("urban1k", str(urban))
    assert len(retrieval.images) == len(retrieval.captions) == 8
    suite = read_benchmark("fgovd", str(fgovd))
    assert list(suite.files) == ["hard", "medium", "easy", "trivial"]
    boxes = len(suite.files["trivial"])
    for name, changed in (("hard", 1), ("medium", 2), ("easy", 3)):
        assert 0 < len(suite.files[name]) <= boxes
        for trial in suite.files[name]:
            true = _attributes(trial.texts[0])
            assert 1 <= len(trial.texts) - 1 <= 10
            for negative in trial.texts[1:]:
                assert sum(true[g] != v for g, v in _attributes(negative).items()) == changed
    assert all(len(t.texts) == 11 and t.texts[0] not in t.texts[1:] for t in suite.files["trivial"])
