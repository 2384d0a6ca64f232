"""A full disk under the prep output (a real tmpfs): a condition of the job, not of a shard. The
job starts no shard after the first write refused for space, ends with one line naming the
folder, the space left and about what the rest needs, keeps no torn file, and once space is
freed a resume writes the dataset an undisturbed run writes."""

import re
import subprocess

import pytest
from helpers import PREP_ARGS, REPO, build_shards_command, prep_dataset, small_disk

from pipeline.prep.output import PROGRESS_DIR

pytestmark = pytest.mark.integration
FULL = (
    r"incomplete: (\d+) shards complete; (\S+): No space left on device \(([\d.]+) MB free\); "
    r"the other (\d+) records need about ([\d.]+) MB; free space, then rerun with existing_output=resume"
)


def run(corpus, out) -> subprocess.CompletedProcess:
    return subprocess.run(
        build_shards_command(corpus, out, *PREP_ARGS), cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_a_full_disk_stops_the_job_in_one_line_and_the_resume_is_identical(
    prep_corpus, prep_reference, tmp_path
):
    corpus, reference = prep_corpus, prep_reference
    whole = sum(s["bytes"] for s in reference["shard_stats"])

    with small_disk(tmp_path / "disk", whole // 3) as disk:
        out = disk.folder / "ds"
        full = run(corpus, out)
        assert full.returncode == 3, full.stderr[-3000:]
        last = full.stderr.strip().splitlines()[-1]
        match = re.fullmatch(FULL, last)
        assert match, last
        complete, folder, _, left, needs = match.groups()
        assert folder == str(out) and 0 < int(complete) < len(reference["shard_stats"])
        assert float(needs) * 1e6 == pytest.approx(whole * int(left) / 320, rel=0.35)
        assert full.stderr.count("no more shards are started") == 1
        assert " raised: " not in full.stderr and "goes back to the queue" not in full.stderr  # never retried
        names = [p.name for p in out.iterdir()]
        assert not [n for n in names if n.endswith(".tmp")] and "dataset.json" not in names
        assert len(list((out / PROGRESS_DIR).iterdir())) == int(complete)  # only whole shards are done

        disk.grow(whole * 4)
        resumed = run(corpus, out)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resuming: {complete} shards" in resumed.stderr
        assert prep_dataset(out) == reference
