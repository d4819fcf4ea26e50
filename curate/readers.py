"""Files to parsed records, in batches, with every malformed record turned into a quarantine entry.

Supported: JSON Lines (``.jsonl``, ``.ndjson``; also ``.gz`` and ``.zst``), JSON arrays (``.json``, same
compressions), Parquet and CSV/TSV. A path may be a file, a directory (searched recursively) or a glob.

Nothing here holds a whole large file: JSONL and CSV stream line by line, Parquet by row group batches and
JSON arrays either in one piece (files under ``WHOLE_JSON_LIMIT``, parsed by orjson) or element by
element with a streaming decoder. A record never crashes the run: bad JSON, invalid UTF-8, a record that
is not an object, a record above ``max_record_bytes``, a CSV row with the wrong number of fields all
become :class:`Bad` entries naming the file and line.
"""

from __future__ import annotations

import csv
import glob as globmod
import gzip
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

JSONL_EXT = (".jsonl", ".ndjson")
JSON_EXT = (".json",)
CSV_EXT = (".csv", ".tsv")
PARQUET_EXT = (".parquet", ".pq")
COMPRESSED_EXT = (".gz", ".zst", ".zstd")
WHOLE_JSON_LIMIT = 256 * 1024 * 1024  # JSON arrays below this are parsed in one call (fast)
RAW_EXCERPT = 300  # characters of a bad line kept in the quarantine


class InputError(ValueError):
    """A problem with an input path as a whole (missing, unsupported format): raised before any work."""


@dataclass
class Bad:
    """One quarantined input unit."""

    line: int
    error: str
    raw: str = ""
    field: str | None = None


@dataclass
class Batch:
    """Parsed records from one file: ``lines[i]`` is where ``records[i]`` starts (1-based)."""

    path: str
    lines: list[int] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    bad: list[Bad] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records) + len(self.bad)


def file_format(path: str | Path) -> str:
    """'jsonl', 'json', 'csv', 'tsv' or 'parquet' from the file name; InputError otherwise."""
    name = str(path).lower()
    for ext in COMPRESSED_EXT:
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    if name.endswith(JSONL_EXT):
        return "jsonl"
    if name.endswith(JSON_EXT):
        return "json"
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(PARQUET_EXT):
        return "parquet"
    raise InputError(f"{path}: unsupported file type (expected .jsonl, .json, .csv, .tsv, .parquet, optionally .gz/.zst)")


def expand_paths(spec: str, base: Path | None = None) -> list[Path]:
    """The files a path spec names: a file, a directory (recursive, supported types only) or a glob.

    Sorted, so a run sees files in a stable order. Raises InputError when nothing matches.
    """
    base = base or Path.cwd()
    p = Path(spec).expanduser()
    if not p.is_absolute():
        p = base / p
    if any(ch in spec for ch in "*?["):
        files = [Path(f) for f in sorted(globmod.glob(str(p), recursive=True)) if Path(f).is_file()]
    elif p.is_dir():
        files = []
        for f in sorted(p.rglob("*")):
            if f.is_file():
                try:
                    file_format(f)
                except InputError:
                    continue
                files.append(f)
    elif p.is_file():
        files = [p]
    else:
        raise InputError(f"{spec}: no such file or directory")
    if not files:
        raise InputError(f"{spec}: matches no input files")
    for f in files:
        file_format(f)  # unsupported types named explicitly or by a glob are errors, before any work
    return files


def _open_binary(path: Path) -> BinaryIO:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if name.endswith((".zst", ".zstd")):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _excerpt(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        raw = raw[: RAW_EXCERPT * 4].decode("utf-8", errors="replace")
    return raw[:RAW_EXCERPT] + ("…" if len(raw) > RAW_EXCERPT else "")


def _json_error(exc: Exception) -> str:
    msg = str(exc)
    if "utf-8" in msg.lower() or "surrogate" in msg.lower():
        return "invalid UTF-8"
    return f"invalid JSON: {msg}"


def _check_object(obj: Any) -> str | None:
    """None for a record a shape can read (an object, or a bare string: a prompt-only line); else the problem."""
    if isinstance(obj, (dict, str)):
        return None
    return f"expected a JSON object (or a string), got {type(obj).__name__}"


def read_jsonl(path: Path, batch_size: int, max_record_bytes: int, start: int = 0, end: int | None = None, first_line: int = 1) -> Iterator[Batch]:
    """Batches of up to ``batch_size`` records from a JSONL file (plain, .gz or .zst), with 1-based line
    numbers; bad JSON, non-objects and lines above ``max_record_bytes`` go to ``batch.bad``, never raise.

    ``start``/``end`` read only that byte range of a plain file (a range from :func:`jsonl_ranges`: it starts at
    a line's first byte), whose first line is line ``first_line`` of the file."""
    if start or end is not None:
        with open(path, "rb") as fh:
            fh.seek(start)
            blob = fh.read((end - start) if end is not None else -1)
        yield from jsonl_lines(str(path), split_lines(blob), batch_size, max_record_bytes, first_line)
        return
    with _open_binary(path) as fh:
        yield from jsonl_lines(str(path), fh, batch_size, max_record_bytes, first_line)


def jsonl_lines(path: str, lines: Iterable[bytes], batch_size: int, max_record_bytes: int, first_line: int = 1) -> Iterator[Batch]:
    """:func:`read_jsonl` over lines already read (bytes), the first being line ``first_line`` of ``path``."""
    batch = Batch(path)
    loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
    lines_out, records = batch.lines, batch.records
    n = 0
    for lineno, line in enumerate(lines, start=first_line):
        if len(line) > max_record_bytes:
            batch.bad.append(
                Bad(lineno, f"record of {len(line):,} bytes exceeds max_record_bytes ({max_record_bytes:,})", _excerpt(line[:RAW_EXCERPT]))
            )
        elif not line.strip():
            continue  # blank lines are not records
        else:
            try:
                obj = loads(line)
            except JSONDecodeError as exc:
                batch.bad.append(Bad(lineno, _json_error(exc), _excerpt(line)))
            else:
                if type(obj) is dict or type(obj) is str:
                    lines_out.append(lineno)
                    records.append(obj)
                else:
                    batch.bad.append(Bad(lineno, _check_object(obj) or "not an object", _excerpt(line)))
        n += 1
        if n >= batch_size:
            yield batch
            batch = Batch(path)
            lines_out, records = batch.lines, batch.records
            n = 0
    if len(batch):
        yield batch


def split_lines(blob: bytes) -> list[bytes]:
    """``blob``'s lines as a binary file iterates them: split at ``\\n`` only, each keeping its ``\\n``."""
    parts = blob.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def jsonl_ranges(path: Path, lines_per_range: int, block_bytes: int = 1 << 24) -> Iterator[tuple[int, int, int]]:
    """``(start, end, first_line)`` byte ranges of a plain JSONL file, each ``lines_per_range`` whole lines (the
    last one fewer), so workers can parse a large file in parallel; line numbers stay those of the file."""
    import numpy as np

    start, line, count, offset = 0, 1, 0, 0
    with open(path, "rb") as fh:
        while True:
            block = fh.read(block_bytes)
            if not block:
                break
            newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
            i = lines_per_range - count - 1  # the newline that ends the current range
            while i < newlines.size:
                end = offset + int(newlines[i]) + 1
                yield start, end, line
                start, line = end, line + lines_per_range
                i += lines_per_range
            count = (count + newlines.size) % lines_per_range
            offset += len(block)
    if offset > start:
        yield start, offset, line


def compressed_jsonl_blobs(path: Path, lines_per_blob: int) -> Iterator[tuple[bytes, int]]:
    """``(lines, first_line)``: a compressed JSONL file's decompressed lines, ``lines_per_blob`` at a time, joined
    (the cheap part of reading: parsing them can then run in parallel)."""
    with _open_binary(path) as fh:
        buf: list[bytes] = []
        first = 1
        for line in fh:
            buf.append(line if line.endswith(b"\n") else line + b"\n")
            if len(buf) >= lines_per_blob:
                yield b"".join(buf), first
                first += len(buf)
                buf = []
        if buf:
            yield b"".join(buf), first


def read_json_array(path: Path, batch_size: int, max_record_bytes: int) -> Iterator[Batch]:
    """A JSON array (or a single JSON object) file; ``line`` is the element number (1-based)."""
    size = path.stat().st_size
    compressed = path.name.lower().endswith(COMPRESSED_EXT)
    if size <= WHOLE_JSON_LIMIT and not compressed:
        data = path.read_bytes()
        if not data.strip():
            return
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None  # fall through to the streaming decoder, which salvages and locates the error
        del data
        if parsed is not None:
            items = parsed if isinstance(parsed, list) else [parsed]
            for start in range(0, len(items), batch_size):
                batch = Batch(str(path))
                for i, obj in enumerate(items[start : start + batch_size], start=start + 1):
                    problem = _check_object(obj)
                    if problem:
                        batch.bad.append(Bad(i, problem, _excerpt(orjson.dumps(obj))))
                    else:
                        batch.lines.append(i)
                        batch.records.append(obj)
                yield batch
            return
    yield from _stream_json_array(path, batch_size, max_record_bytes)


def _stream_json_array(path: Path, batch_size: int, max_record_bytes: int, chunk_chars: int = 1 << 22) -> Iterator[Batch]:
    """Element-by-element decoding of a JSON array of any size, holding one chunk plus one element.

    An element that fails to decode ends the file (a JSON array cannot be resynchronized reliably):
    the elements before it are kept and one quarantine entry names the element and line of the error.
    """
    decoder = json.JSONDecoder()
    with _open_binary(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape")
        buf, pos, line_base, eof = "", 0, 1, False
        element = 0
        batch = Batch(str(path))

        def fill() -> bool:
            nonlocal buf, pos, line_base, eof
            if eof:
                return False
            more = text.read(chunk_chars)
            if not more:
                eof = True
                return False
            line_base += buf.count("\n", 0, pos)
            buf, pos = buf[pos:] + more, 0
            return True

        def skip_ws() -> None:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                    pos += 1
                if pos < len(buf) or not fill():
                    return

        fill()
        skip_ws()
        if pos >= len(buf):
            return
        single = buf[pos] != "["
        if not single:
            pos += 1
        while True:
            skip_ws()
            if pos >= len(buf):
                if not single:
                    line_here = line_base + buf.count(chr(10), 0, pos)
                    batch.bad.append(Bad(element + 1, f"truncated JSON array: no closing ']' after element {element} (line {line_here})"))
                break
            if not single and buf[pos] == "]":
                break
            element += 1
            err: Exception | None = None
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as exc:
                    # the element may run past the chunk: read more and retry, within the size cap
                    if len(buf) - pos > max_record_bytes:
                        err = ValueError(f"record exceeds max_record_bytes ({max_record_bytes:,})")
                        break
                    if not fill():
                        err = exc
                        break
            if err is not None:
                line = line_base + buf.count("\n", 0, pos)
                batch.bad.append(Bad(element, f"{_json_error(err)} (element {element}, line {line}); rest of file not readable",
                                     _excerpt(buf[pos : pos + RAW_EXCERPT])))
                break
            raw_text = buf[pos:end]
            pos = end
            if _has_surrogate(raw_text):
                batch.bad.append(Bad(element, "invalid UTF-8", _excerpt(raw_text.encode("utf-8", "replace"))))
            elif len(raw_text) > max_record_bytes:
                batch.bad.append(Bad(element, f"record of {len(raw_text):,} chars exceeds max_record_bytes ({max_record_bytes:,})", _excerpt(raw_text)))
            else:
                problem = _check_object(obj)
                if problem:
                    batch.bad.append(Bad(element, problem, _excerpt(raw_text)))
                else:
                    batch.lines.append(element)
                    batch.records.append(obj)
            if len(batch) >= batch_size:
                yield batch
                batch = Batch(str(path))
            if single:
                break
            skip_ws()
            if pos < len(buf) and buf[pos] == ",":
                pos += 1
        if len(batch):
            yield batch


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def read_csv(path: Path, batch_size: int, max_record_bytes: int, delimiter: str, header: bool | list[str]) -> Iterator[Batch]:
    """CSV/TSV rows as dicts of strings; ``line`` is the physical line where the row starts."""
    with _open_binary(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        names: list[str] | None = list(header) if isinstance(header, list) else None
        batch = Batch(str(path))
        start = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                batch.bad.append(Bad(start, f"invalid CSV: {exc}"))
                start = reader.line_num + 1
                continue
            line, start = start, reader.line_num + 1
            if names is None:
                names = [n.strip() for n in row]
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            joined = delimiter.join(row)
            if _has_surrogate(joined):
                batch.bad.append(Bad(line, "invalid UTF-8", _excerpt(joined.encode("utf-8", "replace"))))
            elif len(joined) > max_record_bytes:
                batch.bad.append(Bad(line, f"record of {len(joined):,} chars exceeds max_record_bytes ({max_record_bytes:,})", _excerpt(joined)))
            elif len(row) != len(names):
                batch.bad.append(Bad(line, f"expected {len(names)} fields, got {len(row)}", _excerpt(joined)))
            else:
                batch.lines.append(line)
                batch.records.append(dict(zip(names, row)))
            if len(batch) >= batch_size:
                yield batch
                batch = Batch(str(path))
        if len(batch):
            yield batch


def read_parquet(path: Path, batch_size: int) -> Iterator[Batch]:
    """Batches of up to ``batch_size`` rows of a Parquet file as dicts, numbered from 1 (the row's position)."""
    import pyarrow.parquet as pq

    row = 0
    for rb in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        rows = rb.to_pylist()
        yield Batch(str(path), list(range(row + 1, row + len(rows) + 1)), rows)
        row += len(rows)


def read_file(
    path: Path,
    *,
    batch_size: int = 50_000,
    max_record_bytes: int = 4 * 1024 * 1024,
    csv_header: bool | list[str] = True,
) -> Iterator[Batch]:
    """Batches of parsed records (dicts) and quarantine entries from one file."""
    fmt = file_format(path)
    if path.stat().st_size == 0:
        return
    if fmt == "jsonl":
        yield from read_jsonl(path, batch_size, max_record_bytes)
    elif fmt == "json":
        yield from read_json_array(path, batch_size, max_record_bytes)
    elif fmt in ("csv", "tsv"):
        yield from read_csv(path, batch_size, max_record_bytes, "\t" if fmt == "tsv" else ",", csv_header)
    else:
        yield from read_parquet(path, batch_size)
