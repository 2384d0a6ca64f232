"""metrics.jsonl across restarts: every step appears once."""

import json

from pipeline.training.metrics import MetricsLog


def _log(path, steps, start_step):
    log = MetricsLog(path, enabled=True, start_step=start_step)
    for step in steps:
        log.count(4, 40)
        log.write(step, {"loss": float(step)}, {}, 1, None, 1.0, False, skipped_samples=0)
    log.close()


def test_a_resumed_run_replaces_what_the_dead_run_logged_after_its_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _log(path, range(1, 8), start_step=0)  # died after logging step 7; last checkpoint at step 5
    _log(path, range(6, 11), start_step=5)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == list(range(1, 11))
    _log(path, [1, 2], start_step=0)  # a fresh run (no checkpoint) in the same folder starts over
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
