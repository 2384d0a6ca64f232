"""Manifest tools: ``inspect`` (what is in it), ``verify`` (bytes match the manifest),
``validate`` (every sample conforms to the schema). Each returns a list of problems."""

from __future__ import annotations

import io
from collections.abc import Iterator

from PIL import Image

from pipeline import storage
from pipeline.config import one_line
from pipeline.schema import Sample, sample_key
from pipeline.shards.manifest import Manifest
from pipeline.shards.reader import file_digest, read_samples

MAX_PROBLEMS = 50  # a broken dataset usually breaks the same way many times


def inspect(m: Manifest) -> str:
    t, source, text = m.totals, m.get("input"), m.get("text")
    spec = "  ".join(f"{k}={v}" for k, v in source.items() if k not in ("format", "source") and v is not None)
    lines = [
        f"dataset   {m.name}  ({m.root})",
        f"created   {m.get('created')}  by {m.get('code_version')}",
        f"input     {m.get('input.format')}  {spec}  (source {m.get('input.source')!r})",
        f"text      spaCy {text.get('model')} {text.get('model_version')}",
        f"grounder  {m.get('grounder').get('name')}",
        f"shards    {len(m.shards)}  ({t.bytes / 1e6:.1f} MB)",
        f"records   {t.inputs} in = {t.written} written + {t.dropped} dropped",
        f"text      {t.phrases} phrases, {t.regions} regions, {t.linked_phrases} phrases grounded "
        f"({t.ambiguous_phrases} left unlinked as ambiguous)",
    ]
    for title, counts in (
        ("dropped", t.dropped_by_reason),
        ("repaired", t.repaired_by_reason),
        ("boxes dropped", t.boxes_dropped_by_reason),
    ):
        if counts:
            lines.append(f"{title}:")
            lines += [f"  {reason:<28} {count:>8}" for reason, count in counts.items()]
    return "\n".join(lines)


def verify(m: Manifest) -> list[str]:
    """Every shard exists with the recorded size, sha256 and sample count; totals add up."""
    problems = []
    t = m.totals
    if t.inputs != t.written + t.dropped:
        problems.append(f"totals: inputs {t.inputs} != written {t.written} + dropped {t.dropped}")
    if sum(s.samples for s in m.shards) != t.written:
        problems.append("totals: shard sample counts do not add up to 'written'")
    if m.dropped().num_rows != t.dropped:
        problems.append(f"dropped.parquet: {m.dropped().num_rows} rows, manifest says {t.dropped}")
    for shard in m.shards:
        if not storage.exists(shard.url):
            problems.append(f"{shard.name}: missing")
            continue
        size, sha = file_digest(shard.url)
        if (size, sha) != (shard.bytes, shard.sha256):
            problems.append(
                f"{shard.name}: {size} bytes sha256 {sha[:12]}…, manifest says "
                f"{shard.bytes} bytes sha256 {shard.sha256[:12]}…"
            )
        elif (n := sum(1 for _ in _samples(shard.url))) != shard.samples:
            problems.append(f"{shard.name}: {n} samples, manifest says {shard.samples}")
    return problems[:MAX_PROBLEMS]


def validate(m: Manifest) -> list[str]:
    """Parse every sample against schema v1 and check its key and its image."""
    problems = []
    for shard in m.shards:
        for key, files in _samples(shard.url):
            problem = _sample_problem(key, files)
            if problem:
                problems.append(f"{shard.name}/{key}: {problem}")
            if len(problems) >= MAX_PROBLEMS:
                return problems
    return problems


def _sample_problem(key: str, files: dict[str, bytes]) -> str:
    """What is wrong with one sample ("" if nothing): whatever its bytes hold, a finding."""
    if set(files) - {"txt"} != {"jpg", "json"}:  # txt: in shards written since 2026-12
        return f"files {sorted(files)}, expected jpg, json and txt"
    try:
        sample = Sample.parse(files["json"])
        if "txt" in files and files["txt"] != sample.caption.encode():
            return "txt is not the json's caption"
        if key != sample_key(sample.source, sample.id):
            return "key is not sample_key(source, id)"
    except (ValueError, RecursionError) as e:  # SchemaError, bad JSON or UTF-8, lone surrogates
        return one_line(e, 300) or repr(e)
    try:
        size = Image.open(io.BytesIO(files["jpg"])).size
    except Exception as e:  # noqa: BLE001 (any decoder failure is the finding)
        return f"jpg does not decode: {e}"
    if size != (sample.width, sample.height):
        return f"jpg is {size}, json says {(sample.width, sample.height)}"
    return ""


def _samples(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, streamed the way WebDataset groups tar members."""
    for sample in read_samples(url, handler=_reraise):
        yield sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")}


def _reraise(e: Exception) -> bool:
    raise e
