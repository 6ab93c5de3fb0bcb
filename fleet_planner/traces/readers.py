"""Readers for the public request-trace formats and a Mooncake JSONL writer.

Every malformed input raises :class:`InputError` naming the file and the line/field, because a
replay built on a silently mangled trace produces numbers nobody can trust.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleet_planner.errors import InputError, unreadable
from fleet_planner.traces.trace import Trace

log = logging.getLogger(__name__)

TRACE_FORMATS = ("mooncake", "azure", "csv", "burstgpt")
# Bounds far past any real request or trace, so a slip (an extra digit run, 1e300) is an error
# naming its line, not an int64 overflow that turns token counts negative or an arrival that
# no array can index.
MAX_TOKENS = 1_000_000_000
MAX_ARRIVAL_S = 10 * 365 * 86_400.0

_GENERIC_COLUMNS = ("arrival_s", "input_tokens", "output_tokens")
_AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length")
_BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")
# Trailing UTC offset on an Azure timestamp ("Z", "+00:00", "-0530"); numpy cannot parse it.
_TZ_SUFFIX = re.compile(r"(Z|([+-])(\d{2}):?(\d{2}))$")


def read_trace(path: str | Path, format: str, select: Mapping[str, Sequence[str]] | None = None) -> Trace:
    """Load a trace file in one of :data:`TRACE_FORMATS`, sorted by arrival (stable).

    ``select`` keeps the rows of a CSV trace whose named columns hold one of the given values
    (e.g. BurstGPT's ``{"Model": ["GPT-4"]}``: one model of a trace that logs several)."""
    path = Path(path)
    if format == "mooncake":
        if select:
            raise InputError("select applies to CSV traces only", file=path, field="select")
        return _read_mooncake(path)
    if format == "azure":
        return _read_azure(path, select)
    if format == "csv":
        return _read_generic_csv(path, select)
    if format == "burstgpt":
        return _read_burstgpt(path, select)
    raise InputError(
        f"unknown trace format {format!r} (use one of {', '.join(TRACE_FORMATS)})", file=path, field="format"
    )


def write_mooncake_jsonl(trace: Trace, path: str | Path) -> None:
    """Write ``trace`` as Mooncake JSONL (integer millisecond timestamps, ``hash_ids`` if present)."""
    path = Path(path)
    timestamps = np.rint(trace.arrival_s * 1000.0).astype(np.int64)
    lines = []
    for i, (ts, isl, osl) in enumerate(
        zip(timestamps.tolist(), trace.input_tokens.tolist(), trace.output_tokens.tolist())
    ):
        record = f'{{"timestamp": {ts}, "input_length": {isl}, "output_length": {osl}'
        if trace.hash_ids is not None:
            record += f', "hash_ids": {json.dumps(trace.hash_ids[i])}'
        lines.append(record + "}\n")
    try:
        path.write_text("".join(lines), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write trace: {unreadable(exc)}", file=path) from exc


# --- Mooncake JSONL ---------------------------------------------------------------------------


def _read_mooncake(path: Path) -> Trace:
    timestamps: list[float] = []
    inputs: list[int] = []
    outputs: list[int] = []
    hashes: list[list[int] | None] = []
    line_numbers: list[int] = []
    for line_no, line in _text_lines(path):
        if not line.strip():
            continue
        where = f"line {line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON ({exc.msg})", file=path, field=where) from exc
        if not isinstance(record, dict):
            raise InputError("expected a JSON object", file=path, field=where)
        for name in _MOONCAKE_FIELDS:
            if name not in record:
                raise InputError("missing field", file=path, field=f"{where}: {name}")
        timestamp = _json_number(record["timestamp"], path, f"{where}: timestamp")
        if timestamp < 0:
            raise InputError(f"must be >= 0 (got {timestamp!r})", file=path, field=f"{where}: timestamp")
        timestamps.append(timestamp)
        line_numbers.append(line_no)
        inputs.append(_json_tokens(record["input_length"], path, f"{where}: input_length"))
        outputs.append(_json_tokens(record["output_length"], path, f"{where}: output_length"))
        hashes.append(_json_hash_ids(record.get("hash_ids"), path, f"{where}: hash_ids"))
    if not timestamps:
        raise InputError("trace has no requests", file=path)
    ts = np.asarray(timestamps, dtype=np.float64)
    late = int(np.argmax(ts))
    if (ts[late] - ts.min()) / 1000.0 > MAX_ARRIVAL_S:
        raise InputError(
            f"more than {MAX_ARRIVAL_S:.0f} s after the first request (got {timestamps[late]!r} ms)",
            file=path,
            field=f"line {line_numbers[late]}: timestamp",
        )
    # Keep prefix ids only when the file carries them; a record without them shares no prefix.
    hash_ids = [h or [] for h in hashes] if any(h is not None for h in hashes) else None
    return _build(path, (ts - ts.min()) / 1000.0, np.asarray(inputs, np.int64), np.asarray(outputs, np.int64), hash_ids)


def _json_number(value: object, path: Path, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"must be a number (got {value!r})", file=path, field=field)
    if not math.isfinite(value):
        raise InputError(f"must be finite (got {value!r})", file=path, field=field)
    return float(value)


def _json_tokens(value: object, path: Path, field: str) -> int:
    number = _json_number(value, path, field)
    if number != int(number):
        raise InputError(f"must be a whole number of tokens (got {value!r})", file=path, field=field)
    if number < 1:
        raise InputError(f"must be >= 1 token (got {value!r})", file=path, field=field)
    if number > MAX_TOKENS:
        raise InputError(f"must be <= {MAX_TOKENS} tokens (got {value!r})", file=path, field=field)
    return int(number)


def _json_hash_ids(value: object, path: Path, field: str) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InputError("must be a list of integers", file=path, field=field)
    return value


# --- CSV formats ------------------------------------------------------------------------------


def _read_azure(path: Path, select: Mapping[str, Sequence[str]] | None) -> Trace:
    """Azure LLM inference CSV, original (TIMESTAMP, ...) or normalised (arrival_s, ...) header."""
    header, rows = _read_csv(path, select)
    if all(name in header for name in _AZURE_COLUMNS):
        cols = _columns(path, header, rows, _AZURE_COLUMNS)
        arrival = _timestamps_to_seconds(path, cols["TIMESTAMP"], rows.line_numbers)
        input_name, output_name = "ContextTokens", "GeneratedTokens"
    elif all(name in header for name in _GENERIC_COLUMNS):
        cols = _columns(path, header, rows, _GENERIC_COLUMNS)
        arrival = _seconds_column(path, "arrival_s", cols["arrival_s"], rows.line_numbers)
        input_name, output_name = "input_tokens", "output_tokens"
    else:
        hint = " (a BurstGPT file: use format burstgpt)" if is_burstgpt_header(header) else ""
        if header and header[0].startswith("{"):
            hint = " (a JSON lines file: use format mooncake)"
        shown = ", ".join(header)
        shown = shown if len(shown) <= 200 else shown[:200] + "..."  # a JSON line read as CSV is long
        raise InputError(
            f"unrecognised Azure header [{shown}]; "
            f"expected {', '.join(_AZURE_COLUMNS)} or {', '.join(_GENERIC_COLUMNS)}{hint}",
            file=path,
            field="header",
        )
    inputs = _token_column(path, input_name, cols[input_name], rows.line_numbers, min_tokens=1)
    # Azure logs a few requests that generated nothing; count them as one token rather than
    # rejecting a real trace, and say how many were changed.
    outputs = _at_least_one_token(path, output_name, cols[output_name], rows.line_numbers)
    return _build(path, arrival, inputs, outputs, None)


def _read_burstgpt(path: Path, select: Mapping[str, Sequence[str]] | None) -> Trace:
    """BurstGPT CSV (``Timestamp`` in seconds, ``Request tokens``, ``Response tokens``; its
    ``Model`` and ``Log Type`` columns are for ``select``, to replay one model or one kind of log).
    Its failed requests log 0 response tokens: they arrived and were prefilled, so they count
    with one output token, like any logged 0, and the number changed is logged."""
    header, rows = _read_csv(path, select)
    cols = _columns(path, header, rows, _BURSTGPT_COLUMNS)
    arrival = _seconds_column(path, "Timestamp", cols["Timestamp"], rows.line_numbers)
    inputs = _at_least_one_token(path, "Request tokens", cols["Request tokens"], rows.line_numbers)
    outputs = _at_least_one_token(path, "Response tokens", cols["Response tokens"], rows.line_numbers)
    return _build(path, arrival - arrival.min(), inputs, outputs, None)


def _at_least_one_token(path: Path, name: str, values: list[str], line_numbers: list[int]) -> np.ndarray:
    """A token column where a logged 0 counts as 1 (a real trace's artefact, not a reason to
    reject it); the number changed is logged. Negative or fractional counts are still errors."""
    column = _token_column(path, name, values, line_numbers, min_tokens=0)
    zeros = int(np.count_nonzero(column == 0))
    if zeros:
        log.warning("%s: %d requests with 0 %s counted as 1", path, zeros, name)
    return np.maximum(column, 1)


def _read_generic_csv(path: Path, select: Mapping[str, Sequence[str]] | None) -> Trace:
    header, rows = _read_csv(path, select)
    cols = _columns(path, header, rows, _GENERIC_COLUMNS)
    arrival = _seconds_column(path, "arrival_s", cols["arrival_s"], rows.line_numbers)
    inputs = _token_column(path, "input_tokens", cols["input_tokens"], rows.line_numbers, min_tokens=1)
    outputs = _token_column(path, "output_tokens", cols["output_tokens"], rows.line_numbers, min_tokens=1)
    return _build(path, arrival, inputs, outputs, None)


@dataclass
class _Rows:
    """Data rows of a CSV with each row's 1-based file line, for error messages."""

    values: list[list[str]]
    line_numbers: list[int]


def is_burstgpt_header(header: Iterable[str]) -> bool:
    """Whether a CSV header has BurstGPT's columns (what ``format: burstgpt`` reads)."""
    return set(_BURSTGPT_COLUMNS) <= set(header)


def csv_header(path: Path) -> list[str] | None:
    """A CSV file's header as :func:`read_trace` reads it (first non-blank row, stripped, BOM
    removed), or None when the file cannot be read or has none."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return next(([cell.strip() for cell in row] for row in csv.reader(handle) if not _blank(row)), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def _blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def _read_csv(path: Path, select: Mapping[str, Sequence[str]] | None) -> tuple[list[str], _Rows]:
    """Header (stripped, BOM removed) and the non-blank data rows (those ``select`` keeps)."""
    rows = _Rows([], [])
    header: list[str] | None = None
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            for row in reader:
                if _blank(row):
                    continue
                if header is None:
                    header = [cell.strip() for cell in row]
                else:
                    rows.values.append(row)
                    rows.line_numbers.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read trace: {unreadable(exc)}", file=path) from exc
    if header is None:
        raise InputError("file is empty", file=path)
    return header, _selected(path, header, rows, select) if select else rows


def _selected(path: Path, header: list[str], rows: _Rows, select: Mapping[str, Sequence[str]]) -> _Rows:
    """The rows whose every named column holds one of its values (cells compared stripped)."""
    keep = [True] * len(rows.values)
    for column, values in select.items():
        if column not in header:
            raise InputError(f"no column {column!r} (header: {', '.join(header)})", file=path, field="select")
        index, allowed = header.index(column), {str(value).strip() for value in values}
        keep = [k and len(row) > index and row[index].strip() in allowed for k, row in zip(keep, rows.values)]
    kept = _Rows(
        [row for row, k in zip(rows.values, keep) if k], [line for line, k in zip(rows.line_numbers, keep) if k]
    )
    if rows.values and not kept.values:
        wanted = "; ".join(f"{column} in {sorted(map(str, values))}" for column, values in select.items())
        raise InputError(f"no row matches select ({wanted})", file=path, field="select")
    return kept


def _columns(path: Path, header: list[str], rows: _Rows, names: Sequence[str]) -> dict[str, list[str]]:
    """The named columns as lists of raw strings; short rows are reported with their line."""
    missing = [name for name in names if name not in header]
    if missing:
        raise InputError(
            f"missing column(s) {', '.join(missing)} (header: {', '.join(header)})", file=path, field="header"
        )
    if not rows.values:
        raise InputError("file has no data rows", file=path)
    index = {name: header.index(name) for name in names}
    needed = max(index.values()) + 1
    for row, line_no in zip(rows.values, rows.line_numbers):
        if len(row) < needed:
            short = next(name for name, i in index.items() if i >= len(row))
            raise InputError("missing value", file=path, field=f"line {line_no}: {short}")
    return {name: [row[i] for row in rows.values] for name, i in index.items()}


def _float_column(path: Path, name: str, values: list[str], line_numbers: list[int]) -> np.ndarray:
    """Finite floats, or an InputError at the first bad cell."""
    try:
        column = np.asarray(values, dtype=np.float64)
    except ValueError:  # slow path only to find the offending line
        column = np.asarray([_cell_float(path, name, v, n) for v, n in zip(values, line_numbers)], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(column))
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"must be finite (got {values[i].strip()!r})", file=path, field=f"line {line_numbers[i]}: {name}"
        )
    return column


def _cell_float(path: Path, name: str, value: str, line_no: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise InputError(f"not a number: {value!r}", file=path, field=f"line {line_no}: {name}") from None


def _seconds_column(path: Path, name: str, values: list[str], line_numbers: list[int]) -> np.ndarray:
    column = _float_column(path, name, values, line_numbers)
    bad = np.flatnonzero((column < 0) | (column > MAX_ARRIVAL_S))
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"must be within [0, {MAX_ARRIVAL_S:.0f}] s (got {values[i].strip()!r})",
            file=path,
            field=f"line {line_numbers[i]}: {name}",
        )
    return column


def _token_column(path: Path, name: str, values: list[str], line_numbers: list[int], *, min_tokens: int) -> np.ndarray:
    column = _float_column(path, name, values, line_numbers)
    bad = np.flatnonzero((column < min_tokens) | (column > MAX_TOKENS) | (column != np.floor(column)))
    if bad.size:
        i = int(bad[0])
        problem = f"must be a whole number in [{min_tokens}, {MAX_TOKENS}] (got {values[i].strip()!r})"
        raise InputError(problem, file=path, field=f"line {line_numbers[i]}: {name}")
    return column.astype(np.int64)


def _timestamps_to_seconds(path: Path, values: list[str], line_numbers: list[int]) -> np.ndarray:
    """Seconds since the earliest timestamp; handles any fractional precision and UTC offsets."""
    stripped: list[str] = []
    offsets = np.zeros(len(values), dtype=np.int64)  # seconds east of UTC
    for i, value in enumerate(values):
        text = value.strip()
        match = _TZ_SUFFIX.search(text)
        if match:
            text = text[: match.start()]
            if match.group(2):
                sign = 1 if match.group(2) == "+" else -1
                offsets[i] = sign * (int(match.group(3)) * 3600 + int(match.group(4)) * 60)
        stripped.append(text)
    try:
        stamps = np.asarray(stripped, dtype="datetime64[ns]")
    except ValueError:  # slow path only to find the offending line
        stamps = np.asarray(
            [_cell_timestamp(path, t, n) for t, n in zip(stripped, line_numbers)], dtype="datetime64[ns]"
        )
    nat = np.flatnonzero(np.isnat(stamps))
    if nat.size:
        i = int(nat[0])
        raise InputError(f"not a timestamp: {values[i]!r}", file=path, field=f"line {line_numbers[i]}: TIMESTAMP")
    ns = stamps.astype(np.int64) - offsets * 1_000_000_000
    return (ns - ns.min()).astype(np.float64) / 1e9


def _cell_timestamp(path: Path, text: str, line_no: int) -> np.datetime64:
    try:
        return np.datetime64(text, "ns")
    except ValueError:
        raise InputError(f"not a timestamp: {text!r}", file=path, field=f"line {line_no}: TIMESTAMP") from None


# --- shared -----------------------------------------------------------------------------------


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8-sig") as handle:
            yield from enumerate(handle, start=1)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read trace: {unreadable(exc)}", file=path) from exc


def _build(
    path: Path, arrival: np.ndarray, inputs: np.ndarray, outputs: np.ndarray, hash_ids: list[list[int]] | None
) -> Trace:
    """Sort by arrival (stable, so equal arrivals keep file order) and wrap in a Trace."""
    if arrival.size and np.any(np.diff(arrival) < 0):
        order = np.argsort(arrival, kind="stable")
        arrival, inputs, outputs = arrival[order], inputs[order], outputs[order]
        if hash_ids is not None:
            hash_ids = [hash_ids[i] for i in order]
    return Trace(arrival_s=arrival, input_tokens=inputs, output_tokens=outputs, source=str(path), hash_ids=hash_ids)
