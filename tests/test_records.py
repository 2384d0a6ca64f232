import contextlib
import json
import multiprocessing
import random
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.prep import index as index_module
from pipeline.prep.index import read_index
from pipeline.prep.records import Drop, IdSet, InputRecord, _add, _contains, id_digests, pack, unpack


def _write_jsonl(path, lines):
    encoded = (line if isinstance(line, bytes) else json.dumps(line).encode() for line in lines)
    path.write_bytes(b"\n".join(encoded) + b"\n")


def test_jsonl_rows_become_records_or_reasoned_drops(tmp_path):
    index = tmp_path / "records.jsonl"
    _write_jsonl(
        index,
        [
            {"id": "a", "image": "img/a.jpg", "caption": "A red circle."},
            {
                "id": 7,
                "image": "/abs/b.jpg",
                "caption": "Int ids are fine.",
                "boxes": [{"box": [0, 0, 1, 1], "label": "x"}],
            },
            {"id": "a", "image": "img/c.jpg", "caption": "duplicate"},
            {"id": "d", "image": "img/d.jpg"},
            {"id": "e", "image": "img/e.jpg", "caption": 42},
            {"id": "f", "image": "img/f.jpg", "caption": " \n\t"},
            {"id": "g", "image": "img/g.jpg", "caption": "x" * 101},
            b'{"id": "h", "image": "img/h.jpg", "caption": "bad \xff bytes"}',
            b"not json at all",
            ["a", "list"],
            {"id": True, "image": "img/i.jpg", "caption": "bool id"},
        ],
    )
    items = list(read_index(str(index), max_caption_chars=100))
    assert items[0] == InputRecord(0, "a", f"{tmp_path}/img/a.jpg", "A red circle.", None)
    assert items[1] == InputRecord(
        1, "7", "/abs/b.jpg", "Int ids are fine.", [{"box": [0, 0, 1, 1], "label": "x"}]
    )
    drops = [(d.ordinal, d.id, d.reason) for d in items[2:]]
    assert drops == [
        (2, "a", "duplicate_id"),
        (3, "d", "missing_field"),
        (4, "e", "caption_not_string"),
        (5, "f", "caption_empty"),
        (6, "g", "caption_too_long"),
        (7, "h", "invalid_utf8"),
        (8, None, "unparseable_record"),
        (9, None, "unparseable_record"),
        (10, None, "invalid_id"),
    ]
    assert all(isinstance(d, Drop) for d in items[2:])


def test_parquet_index(tmp_path):
    rows = [
        {
            "id": "a",
            "image": "a.jpg",
            "caption": "one",
            "boxes": [{"box": [0.0, 0.0, 2.0, 2.0], "label": "x"}],
        },
        {"id": "b", "image": "b.jpg", "caption": None, "boxes": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "records.parquet")
    a, b = read_index(str(tmp_path / "records.parquet"), 100)
    assert a == InputRecord(0, "a", f"{tmp_path}/a.jpg", "one", rows[0]["boxes"])
    assert (b.reason, b.id) == ("caption_not_string", "b")


def test_unknown_index_format(tmp_path):
    with pytest.raises(ValueError, match="neither .jsonl nor .parquet"):
        list(read_index(str(tmp_path / "x.csv"), 100))


def test_image_references_resolve_against_the_index_folder_unless_absolute():
    assert storage.resolve("/data/corpus", "images/a.jpg") == "/data/corpus/images/a.jpg"
    assert storage.resolve("/data/corpus", "/elsewhere/a.jpg") == "/elsewhere/a.jpg"
    assert storage.resolve("/data/corpus", "file:///elsewhere/a.jpg") == "/elsewhere/a.jpg"
    assert storage.resolve("s3://bucket/corpus", "images/a.jpg") == "s3://bucket/corpus/images/a.jpg"
    assert storage.resolve("/data/corpus", "s3://bucket/a.jpg") == "s3://bucket/a.jpg"


def test_id_set_finds_exactly_the_ids_a_python_set_finds():
    """Across batches and runs (a small RUN makes several), within a batch, in order."""
    rng = random.Random(3)
    ids = [f"id-{rng.randrange(3000)}" for _ in range(10_000)] + [
        "\ud800 lone surrogate",
        "\ud800 lone surrogate",
    ]
    seen, expected, got = IdSet(), set(), []
    for start in range(0, len(ids), 700):
        got += seen.add_new(id_digests(ids[start : start + 700])).tolist()
    for i in ids:
        expected_new = i not in expected
        expected.add(i)
        assert got.pop(0) == expected_new, i
    assert len(seen) == len(expected)
    assert max(len(runs) for runs in seen.parts) >= 2  # lookups went through runs merged and not


def test_id_set_tells_apart_digests_whose_first_half_collides():
    runs: list = []
    _add(runs, np.array([5, 5, 5, 9], dtype=np.uint64), np.array([1, 2, 3, 4], dtype=np.uint32))
    probe_hi = np.array([5, 5, 5, 9, 9, 7], dtype=np.uint64)
    probe_lo = np.array([3, 2, 4, 4, 1, 1], dtype=np.uint32)
    assert _contains(runs, probe_hi, probe_lo).tolist() == [True, True, False, True, False, False]


def test_records_packed_to_cross_processes_unpack_as_they_were():
    items = [
        InputRecord(0, "a", "/x/0.jpg", "A.", None),
        Drop(1, None, "unparseable_record", "no"),
        InputRecord(2, "b", "/x/2.jpg", "B.", [{"box": [1, 2, 3, 4], "label": "b"}], 5, 9, 2),
        Drop(3, "c", "missing_field", "caption"),
    ]
    assert unpack(pack(items)) == items
    assert unpack(pack(items[:1])) == items[:1] and unpack(pack([])) == []


@pytest.mark.integration  # starts the reader processes
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_an_index_read_in_blocks_by_reader_processes_reads_as_in_one(tmp_path, monkeypatch, fmt):
    """Blank lines, broken lines and ids repeated across blocks: the same records and drops,
    with the same ordinals, as the whole index parsed in this process."""
    rows = [{"id": f"r{i % 700}", "image": f"{i}.jpg", "caption": f"Caption {i}."} for i in range(1000)]
    index = tmp_path / f"records.{fmt}"
    if fmt == "jsonl":
        lines = [json.dumps(row).encode() for row in rows]
        broken = [b"{not json", b'{"id": "\xff"}', b"[" * 100_000, b'{"n": ' + b"9" * 5000 + b"}"]
        lines[10:10] = [b"", b"   ", *broken]
        _write_jsonl(index, lines)
    else:
        pq.write_table(pa.Table.from_pylist(rows), index)
    whole = list(read_index(str(index), 100))
    monkeypatch.setattr(index_module, "BLOCK_BYTES", 2000)
    monkeypatch.setattr(index_module, "BLOCK_ROWS", 64)
    assert list(read_index(str(index), 100)) == whole
    assert [item.ordinal for item in whole] == list(range(len(whole)))
    reasons = Counter(item.reason for item in whole if isinstance(item, Drop))
    # the 5,000-digit number reads as inf (records.parse_json): that row lacks an id, no more
    broken = {"unparseable_record": 2, "missing_field": 1, "invalid_utf8": 1} if fmt == "jsonl" else {}
    assert reasons == {"duplicate_id": 300, **broken}


@pytest.mark.integration  # starts the reader processes, and kills one
@pytest.mark.parametrize("fault", ["folder_deleted", "reader_killed"])
def test_index_readers_that_cannot_start_or_die_cost_nothing(tmp_path, monkeypatch, fault):
    """The driver's working folder deleted under it (a Ray job's working_dir unpacked again) makes
    every reader's spawn fail; a reader killed breaks the pool: the driver parses the rest, and
    the records and drops are those of an undisturbed read."""
    rows = [{"id": f"r{i % 700}", "image": f"{i}.jpg", "caption": f"Caption {i}."} for i in range(1000)]
    index = tmp_path / "records.jsonl"
    _write_jsonl(index, rows)
    whole = list(read_index(str(index), 100))
    monkeypatch.setattr(index_module, "BLOCK_BYTES", 2000)
    killed = []
    if fault == "folder_deleted":
        gone = tmp_path / "working_dir"
        gone.mkdir()
        monkeypatch.chdir(gone)
        gone.rmdir()
    else:
        threading.Thread(target=_kill_a_child, args=(killed,), daemon=True).start()
    assert list(read_index(str(index), 100)) == whole
    assert fault == "folder_deleted" or killed


@pytest.mark.integration  # starts a reader process
def test_a_reader_that_does_not_end_is_killed_not_waited_for(monkeypatch):
    """What a broken pool can leave (a reader it never stops): the read's end kills it after
    ``READER_EXIT_S`` instead of hanging the driver (CI, 2026-12-07: a test hung in the pool's
    shutdown, joining a reader that waited for work forever)."""
    monkeypatch.setattr(index_module, "READER_EXIT_S", 0.5)
    context = multiprocessing.get_context("spawn")
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(1, mp_context=context)
    pool.submit(time.sleep, 3600)
    deadline = time.monotonic() + 60
    while not set(multiprocessing.active_children()) - before:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    readers = set(multiprocessing.active_children()) - before
    started = time.monotonic()
    index_module._stop(pool, readers)
    assert time.monotonic() - started < 10
    assert not any(reader.is_alive() for reader in readers)


def _kill_a_child(killed: list[int]) -> None:
    """SIGKILL the first reader process of this one that appears (a spawned child, not
    multiprocessing's resource tracker), within 30 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if "spawn_main" in " ".join(child.cmdline()):
                    child.kill()
                    killed.append(child.pid)
                    return
        time.sleep(0.005)
