"""The report's verdict against clip is read off the numbers: retrieval within 2 points, regions
better on both box top-1 and FG-OVD hard, the pooler query-specific below 0.95."""

from pipeline.eval.result import ModelResult
from pipeline.eval.verdict import verdict_table, verdicts


def result(name, i2t, t2i, top1, hard, pooler=None):
    return ModelResult(
        name,
        spec=name,
        retrieval={"i2t_R@1": i2t, "t2i_R@1": t2i},
        boxes={"roi": {"top1": top1, "top5": 0.0}},
        fgovd={"roi": {"hard": hard}},
        pooler=pooler or {},
    )


def test_each_model_is_held_against_the_baseline():
    results = [
        result("pretrained", 8.0, 7.0, 1.0, 14.0),
        result("clip", 30.0, 32.0, 1.2, 15.0),
        result("beta", 30.0, 30.5, 1.5, 16.0, {"pooled_cosine": 0.94, "attention_entropy": 0.95}),
        result("harmo", 25.0, 28.0, 2.0, 18.0),
        result("mixed", 31.0, 31.0, 1.3, 14.0, {"pooled_cosine": 0.99, "attention_entropy": 0.5}),
    ]
    v = verdicts(results, "clip")
    assert list(v) == ["pretrained", "beta", "harmo", "mixed"]
    assert v["beta"] == {
        "mean_R@1": -0.75,
        "kept_retrieval": True,
        "box_top1": 0.3,
        "fgovd_hard": 1.0,
        "improved_regions": True,
        "query_specific_pooler": True,
    }
    assert v["harmo"]["mean_R@1"] == -4.5 and not v["harmo"]["kept_retrieval"]
    assert v["harmo"]["improved_regions"] and "query_specific_pooler" not in v["harmo"]
    assert v["mixed"]["kept_retrieval"] and not v["mixed"]["improved_regions"]
    assert not v["mixed"]["query_specific_pooler"]
    assert v["pretrained"]["mean_R@1"] == -23.5 and not v["pretrained"]["improved_regions"]
    ((title, _, header, rows),) = verdict_table(v, "clip")
    assert title == "Against clip" and len(header) == len(rows[0])
    assert rows[1] == ["beta", -0.75, 0.3, 1.0, "yes", "yes", "yes"]
    assert rows[2][4:] == ["no", "yes", ""]


def test_no_baseline_no_verdict():
    assert verdicts([result("beta", 1, 1, 1, 1)], "clip") == {}
    assert verdict_table({}, "clip") == []
