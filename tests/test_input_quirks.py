"""Input files as people have them: a byte-order mark, CRLF line ends, no final newline, a
compressed JSONL index, Parquet with nulls, dictionary and large_string columns or no rows. Each
reads as the plain file does, or is refused in one line (docs/schema.md, "Files as people have
them"). Real files, written here."""

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import BadInput
from pipeline.eval.json_fields import json_lines
from pipeline.prep import index as index_module
from pipeline.prep import inputs
from pipeline.prep.coco import read_coco
from pipeline.prep.config import InputConfig
from pipeline.prep.index import count_index_rows, index_format, parse_block, read_index
from pipeline.prep.job import ShardPlanner
from pipeline.prep.records import InputRecord, unpack
from pipeline.prep.sharegpt4v import read_sharegpt4v
from pipeline.prep.visual_genome import read_visual_genome

BOM = b"\xef\xbb\xbf"
ROWS = [
    {
        "id": "a",
        "image": "img/a.jpg",
        "caption": "A red circle.",
        "boxes": [{"box": [0, 0, 4, 4], "label": "x"}],
    },
    {"id": 7, "image": "img/b.jpg", "caption": "Über café, 日本語, emoji 🚲."},
    {"id": "a", "image": "img/c.jpg", "caption": "The id again."},
    {"id": "d", "image": "img/d.jpg"},
]
# Lines of one index as it worked before: records, a blank line, a row that is not JSON, bad UTF-8.
LINES = [json.dumps(row, ensure_ascii=False).encode() for row in ROWS] + [
    b"",
    b"{not json",
    b'{"id": "h", "image": "h.jpg", "caption": "bad \xff byte"}',
    json.dumps({"id": "z", "image": "z.jpg", "caption": "The last line."}).encode(),
]


def plain(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


def zstd(data: bytes) -> bytes:
    """A standard zstd frame, as the ``zstd`` tool writes it."""
    frame = pa.compress(data, "zstd", asbytes=True)
    assert frame.startswith(b"\x28\xb5\x2f\xfd")  # zstd's magic number
    return frame


SPELLINGS = {  # the same index as people write it: file name suffix, bytes
    "bom": (".jsonl", BOM + plain(LINES)),
    "crlf": (".jsonl", b"\r\n".join(LINES) + b"\r\n"),
    "no_final_newline": (".jsonl", b"\n".join(LINES)),
    "gzip": (".jsonl.gz", gzip.compress(plain(LINES))),
    "gzip_members": (".jsonl.gz", gzip.compress(plain(LINES)[:50]) + gzip.compress(plain(LINES)[50:])),
    "zstd": (".jsonl.zst", zstd(plain(LINES))),
    "bom_crlf_gzip": (".jsonl.gz", gzip.compress(BOM + b"\r\n".join(LINES))),
    "json_suffix_gzip": (".json.gz", gzip.compress(plain(LINES))),
}


def write(folder: Path, name: str, data: bytes) -> str:
    (folder / name).write_bytes(data)
    return str(folder / name)


def read(url: str) -> list:
    return list(read_index(url, max_caption_chars=100))


# --- JSONL indexes ---------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_jsonl_as_people_write_it_reads_as_the_plain_file(tmp_path, spelling):
    """The same records and drops, ordinals, details, and count, as the plain LF file."""
    suffix, data = SPELLINGS[spelling]
    expected = read(write(tmp_path, "records.jsonl", plain(LINES)))
    assert type(expected[0]) is InputRecord and expected[1].caption == ROWS[1]["caption"]
    assert expected[-1].id == "z" and len(expected) == 7
    url = write(tmp_path, f"quirk{suffix}", data)
    assert read(url) == expected
    assert count_index_rows(url) == len(expected)


def test_jsonl_blocks_never_split_a_character_or_a_crlf(tmp_path, monkeypatch):
    """Blocks far smaller than the file, over multi-byte characters and CRLF line ends, from a
    gzip stream: each block is whole lines, and parsed alone (as a reader process does) the blocks
    give the records of the file parsed in one block."""
    rows = [
        {"id": f"r{i}", "image": f"{i}.jpg", "caption": f"Zürich {'日本' * (i % 7)} 🚲 {i}."}
        for i in range(300)
    ]
    data = BOM + b"\r\n".join(json.dumps(row, ensure_ascii=False).encode() for row in rows)
    url = write(tmp_path, "records.jsonl.gz", gzip.compress(data))
    whole = read(url)
    monkeypatch.setattr(index_module, "BLOCK_BYTES", 100)
    blocks = list(index_module._blocks(url))
    assert len(blocks) > 50
    assert all(block.endswith(b"\r\n") for _, block in blocks[:-1])
    assert all(block.decode("utf-8") and not block.startswith(BOM) for _, block in blocks)
    parsed = [item for block in blocks for item in unpack(parse_block(*block, str(tmp_path), 100)[0])]
    assert parsed == whole and [r.id for r in whole] == [row["id"] for row in rows]


def test_compressed_jsonl_is_read_as_it_decompresses(tmp_path, monkeypatch):
    """A gzip index cut short yields its first blocks before the cut is met: the stream is not
    decompressed whole first."""
    rows = [
        json.dumps({"id": i, "image": f"{i}.jpg", "caption": f"Caption {i}."}).encode() for i in range(50_000)
    ]
    data = gzip.compress(plain(rows))
    url = write(tmp_path, "records.jsonl.gz", data[: len(data) // 2])
    monkeypatch.setattr(index_module, "BLOCK_BYTES", 1000)
    blocks = index_module._blocks(url)
    for _ in range(3):
        first, block = next(blocks)
        assert block.startswith(rows[first] + b"\n")
    with pytest.raises(BadInput, match="does not decompress as gzip"):
        list(blocks)


@pytest.mark.parametrize(
    "name, data, codec",
    [
        ("cut.jsonl.gz", gzip.compress(plain(LINES) * 100)[:300], "gzip"),
        ("cut.jsonl.zst", zstd(plain(LINES) * 100)[:40], "zstd"),
        ("plain_named.jsonl.gz", plain(LINES), "gzip"),
        ("gzip_named.jsonl.zst", gzip.compress(plain(LINES)), "zstd"),
    ],
    ids=["cut_gzip", "cut_zstd", "plain_named_gz", "gzip_named_zst"],
)
def test_a_compressed_jsonl_that_does_not_decompress_is_refused_in_one_line(tmp_path, name, data, codec):
    url = write(tmp_path, name, data)
    for attempt in (count_index_rows, read):
        with pytest.raises(BadInput, match=f"^input.index: {url} does not decompress as {codec} ") as e:
            attempt(url)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "url, fmt",
    [
        ("records.jsonl", "jsonl"),
        ("records.json", "jsonl"),
        ("records.parquet", "parquet"),
        ("s3://bucket/records.jsonl.gz", "jsonl"),
        ("records.json.gz", "jsonl"),
        ("records.jsonl.zst", "jsonl"),
    ],
)
def test_index_format_knows_compressed_jsonl(url, fmt):
    assert index_format(url) == fmt


@pytest.mark.parametrize(
    "url", ["records.csv", "records.parquet.gz", "records.jsonl.bz2", "records.gz", "x.zst"]
)
def test_index_format_refuses_other_suffixes_in_one_line(url):
    with pytest.raises(
        BadInput, match=rf"^input.index: {url} is neither \.jsonl nor \.parquet .*\.jsonl\.zst\)$"
    ):
        index_format(url)


def test_a_byte_order_mark_alone_on_the_first_line_leaves_a_blank_line(tmp_path):
    """Rows and their count agree when the mark is all the first line holds."""
    url = write(tmp_path, "records.jsonl", BOM + b"\r\n" + plain(LINES[:2]))
    assert [item.id for item in read(url)] == ["a", "7"]
    assert count_index_rows(url) == 2


# --- Parquet indexes ------------------------------------------------------------------------

COLUMNS = {
    "id": ["a", None, "c", "d", "e"],
    "image": ["a.jpg", "b.jpg", None, "d.jpg", "e.jpg"],
    "caption": ["One.", "Two.", "Three.", None, "Five."],
}


def parquet(folder: Path, table: pa.Table, name: str = "records.parquet") -> str:
    pq.write_table(table, folder / name)
    return str(folder / name)


def test_parquet_nulls_read_as_json_nulls(tmp_path):
    """A null cell is the JSON row's null: the same drops (missing_field, caption_not_string)."""
    boxes = pa.array([None, None, None, None, [{"box": [0.0, 0.0, 2.0, 2.0], "label": "x"}]])
    url = parquet(tmp_path, pa.table({**COLUMNS, "boxes": boxes}))
    rows = [dict(zip(COLUMNS, values)) for values in zip(*COLUMNS.values())]
    rows[4]["boxes"] = [{"box": [0.0, 0.0, 2.0, 2.0], "label": "x"}]
    as_json = read(write(tmp_path, "records.jsonl", plain([json.dumps(row).encode() for row in rows])))
    assert read(url) == as_json
    assert [getattr(item, "reason", "record") for item in as_json] == [
        "record",
        "missing_field",
        "missing_field",
        "caption_not_string",
        "record",
    ]


@pytest.mark.parametrize(
    "encode, arrow_type",
    [
        (lambda column: pa.array(column).dictionary_encode(), pa.dictionary(pa.int32(), pa.string())),
        (lambda column: pa.array(column, pa.large_string()), pa.large_string()),
    ],
    ids=["dictionary", "large_string"],
)
def test_parquet_string_columns_of_any_encoding_read_as_plain_strings(tmp_path, encode, arrow_type):
    expected = read(parquet(tmp_path, pa.table(COLUMNS)))
    encoded = pa.table({name: encode(column) for name, column in COLUMNS.items()})
    url = parquet(tmp_path, encoded, "encoded.parquet")
    assert pq.read_schema(url).field("caption").type == arrow_type  # the file holds that encoding
    assert read(url) == expected


@pytest.mark.parametrize("name", ["records.parquet", "records.jsonl", "records.jsonl.gz"])
def test_an_index_with_zero_rows_is_zero_records_for_the_job(tmp_path, name):
    """Parquet with a schema and no row, an empty JSONL, gzip of nothing: no record to read, no
    shard to cut, a count of 0."""
    url = str(tmp_path / name)
    if name.endswith(".parquet"):
        pq.write_table(pa.table({column: pa.array([], pa.string()) for column in COLUMNS}), url)
    else:
        write(tmp_path, name, gzip.compress(b"") if name.endswith(".gz") else b"")
    cfg = InputConfig(format="index", index=url)
    planner = ShardPlanner(4, skip=set())
    assert list(planner.tasks(inputs.read_input(cfg, inputs.locate(cfg), 100, 8, 8))) == []
    assert planner.records_read == 0 and inputs.count(cfg) == 0 and count_index_rows(url) == 0


# --- JSON annotation files -------------------------------------------------------------------


def coco_files(folder: Path, prefix: bytes) -> tuple[str, str]:
    captions = {
        "images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "a dog"},
            {"id": 11, "image_id": 2, "caption": "cat"},
        ],
    }
    instances = {
        "annotations": [{"id": 20, "image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 5, "iscrowd": 0}],
        "categories": [{"id": 5, "name": "dog"}],
    }
    return (
        write(folder, "captions.json", prefix + json.dumps(captions, indent=1).encode()),
        write(folder, "instances.json", prefix + json.dumps(instances, indent=1).encode()),
    )


@pytest.mark.parametrize("quirk", ["bom", "crlf", "utf-16", "utf-32"])
def test_coco_files_as_people_write_them_read_as_plain(tmp_path, quirk):
    """Whole-file JSON is read in the encoding its byte-order mark declares."""
    expected = list(read_coco(*coco_files(tmp_path, b""), str(tmp_path), 100))
    assert [item.caption for item in expected] == ["A dog.", "Cat."]
    (tmp_path / quirk).mkdir()
    captions, instances = coco_files(tmp_path / quirk, BOM if quirk == "bom" else b"")
    for url in (captions, instances):
        data = Path(url).read_bytes()
        if quirk == "crlf":
            Path(url).write_bytes(data.replace(b"\n", b"\r\n"))
        elif quirk.startswith("utf"):  # PowerShell's Out-File before version 6: UTF-16 with its mark
            Path(url).write_bytes(data.decode().encode(quirk))
    assert list(read_coco(captions, instances, str(tmp_path), 100)) == expected


SHAREGPT4V = [
    {
        "id": "1",
        "image": "coco/1.jpg",
        "conversations": [{"from": "human", "value": "?"}, {"from": "gpt", "value": "A dog."}],
    },
    {"id": "2", "image": "sam/2.jpg", "conversations": [{"from": "gpt", "value": "Café 🚲."}]},
]
VISUAL_GENOME = [
    {"id": 1, "regions": [{"region_id": 1, "x": 1, "y": 2, "width": 3, "height": 4, "phrase": "a dog"}]},
    {"id": 2, "regions": [{"region_id": 2, "x": 0, "y": 0, "width": 5, "height": 5, "phrase": "grass"}]},
]
JSON_LISTS = {
    "sharegpt4v": (SHAREGPT4V, lambda url, images: read_sharegpt4v(url, images, 100)),
    "visual_genome": (VISUAL_GENOME, lambda url, images: read_visual_genome(url, images, 100, 8)),
}


@pytest.mark.parametrize("fmt", JSON_LISTS)
@pytest.mark.parametrize("quirk", ["bom", "crlf"])
def test_json_lists_as_people_write_them_read_as_plain(tmp_path, fmt, quirk):
    items, read_list = JSON_LISTS[fmt]
    text = json.dumps(items, indent=1, ensure_ascii=False).encode()
    expected = list(read_list(write(tmp_path, "plain.json", text), str(tmp_path)))
    assert len(expected) == 2 and all(type(item) is InputRecord for item in expected)
    data = BOM + text if quirk == "bom" else text.replace(b"\n", b"\r\n")
    assert list(read_list(write(tmp_path, f"{quirk}.json", data), str(tmp_path))) == expected


WIDE = ["utf-16", "utf-16-be", "utf-32"]  # Python's utf-16 and utf-32 write the mark, little-endian


def _with_mark(text: str, codec: str) -> bytes:
    return ("\ufeff" + text).encode(codec) if codec.endswith("-be") else text.encode(codec)


@pytest.mark.parametrize("codec", WIDE)
def test_a_wide_jsonl_index_or_json_list_is_refused_in_one_line(tmp_path, codec):
    """Read line by line or in chunks, a UTF-16 or UTF-32 file cannot be taken for UTF-8: it is
    refused before any record, naming the file, its encoding and the conversion."""
    label = codec.upper()[:6]
    rows = "\n".join(json.dumps({"id": str(i), "image": f"{i}.jpg", "caption": "Café."}) for i in range(3))
    index = write(tmp_path, "records.jsonl", _with_mark(rows, codec))
    with pytest.raises(BadInput, match=f"^input.index: {index} is {label} .*iconv -f {label} -t UTF-8"):
        read(index)
    items, read_list = JSON_LISTS["sharegpt4v"]
    captions = write(tmp_path, "captions.json", _with_mark(json.dumps(items), codec))
    with pytest.raises(BadInput, match=f"^input.captions: {captions} is {label} "):
        list(read_list(captions, str(tmp_path)))


@pytest.mark.parametrize("codec", ["utf-8", "utf-8-sig", *WIDE])
def test_benchmark_json_lines_are_read_in_the_encoding_their_mark_declares(tmp_path, codec):
    rows = [{"image": "1.jpg", "caption": "Café."}, {"image": "2.jpg", "caption": "Two."}]
    lines = "\r\n".join(json.dumps(row, ensure_ascii=False) for row in rows)
    file = tmp_path / "test.jsonl"
    file.write_bytes(_with_mark(lines, codec))
    assert [value for _, value in json_lines(file)] == rows
