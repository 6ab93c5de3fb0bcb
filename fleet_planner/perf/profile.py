"""Engine performance profiles: the pre-deployment measurements every sizing decision rests on.

Two on-disk layouts are accepted so users can bring their own profiler output:

* JSON (this repository's ``examples/profiles``): ``prefill_raw_data.json``,
  ``decode_raw_data.json`` and ``meta.json`` in one folder.
* Dynamo profiler NPZ: ``selected_prefill_interpolation/raw_data.npz`` and
  ``selected_decode_interpolation/raw_data.npz`` (``meta.json`` optional).

Everything is validated on load, so a bad profile fails with one clear :class:`InputError` naming
the file and key instead of producing silently wrong latencies later.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleet_planner.bounds import MAX_GPUS_PER_REPLICA
from fleet_planner.errors import InputError, path_kind, read_input_text

PREFILL_JSON = "prefill_raw_data.json"
DECODE_JSON = "decode_raw_data.json"
META_JSON = "meta.json"
PREFILL_NPZ = Path("selected_prefill_interpolation") / "raw_data.npz"
DECODE_NPZ = Path("selected_decode_interpolation") / "raw_data.npz"

PREFILL_KEYS = ("prefill_isl", "prefill_ttft", "prefill_thpt_per_gpu")
DECODE_KEYS = ("x_kv_usage", "y_context_length", "z_itl", "z_thpt_per_gpu")
# Far past any engine (tokens, milliseconds, tokens/s per GPU): a slip such as an extra digit run
# or 1e308 is an error naming its field, not an overflow to inf in the capacity model.
MAX_PROFILE_VALUE = 1e9


@dataclass(frozen=True, eq=False)
class EngineProfile:
    """One engine configuration's measured prefill and decode performance.

    Prefill arrays are sorted by input length; decode arrays are parallel, one entry per measured
    (KV usage, context length) point. ``eq=False`` because numpy arrays have no scalar equality.
    """

    path: str
    name: str
    model: str
    system: str
    backend: str
    tp: int
    gpus_per_engine: int
    max_kv_tokens: int
    max_context: int | None
    prefill_isl: np.ndarray
    prefill_ttft_ms: np.ndarray
    prefill_thpt_per_gpu: np.ndarray
    decode_kv_usage: np.ndarray
    decode_context: np.ndarray
    decode_itl_ms: np.ndarray
    decode_thpt_per_gpu: np.ndarray

    @property
    def decode_batch(self) -> np.ndarray:
        """Running sequences of each decode point: KV tokens in use over tokens per sequence."""
        return self.decode_kv_usage * self.max_kv_tokens / self.decode_context


def load_profile(path: str | Path, *, gpus_per_engine: int | None = None) -> EngineProfile:
    """Load and validate a profile folder in the JSON or the Dynamo NPZ layout.

    ``gpus_per_engine`` overrides ``meta.json`` (needed when an NPZ profile has no meta.json,
    where it otherwise defaults to 1).
    """
    folder = Path(path)
    kind = path_kind(folder)
    if kind == "file":
        raise InputError(
            "is a file; a profile is the folder holding prefill_raw_data.json and decode_raw_data.json "
            "(or the NPZ layout)",
            file=folder,
        )
    if kind is None:
        raise InputError("profile folder not found", file=folder)
    if (folder / PREFILL_JSON).exists() or not (folder / PREFILL_NPZ).exists():
        prefill_file, decode_file = folder / PREFILL_JSON, folder / DECODE_JSON
        prefill, decode = _read_json(prefill_file), _read_json(decode_file)
    else:
        prefill_file, decode_file = folder / PREFILL_NPZ, folder / DECODE_NPZ
        prefill, decode = _read_npz(prefill_file), _read_npz(decode_file)
    meta_file = folder / META_JSON
    meta = _read_json(meta_file) if meta_file.exists() else {}

    p = {key: _positive_array(prefill, key, prefill_file) for key in PREFILL_KEYS}
    _same_lengths(p, PREFILL_KEYS, prefill_file)
    d = {key: _positive_array(decode, key, decode_file) for key in DECODE_KEYS}
    _same_lengths(d, DECODE_KEYS, decode_file)
    max_kv_value = _one_value(decode, "max_kv_tokens", decode_file)
    max_kv = _positive_int(max_kv_value, "max_kv_tokens", decode_file)

    if "max_kv_tokens" in meta:
        meta_kv = _positive_int(meta["max_kv_tokens"], "max_kv_tokens", meta_file)
        if meta_kv != max_kv:
            raise InputError(
                f"disagrees with {decode_file.name} ({meta_kv} != {max_kv})",
                file=meta_file,
                field="max_kv_tokens",
            )
    if gpus_per_engine is not None:
        gpus = _positive_int(gpus_per_engine, "gpus_per_engine", None, MAX_GPUS_PER_REPLICA)
    elif "gpus_per_engine" in meta:
        gpus = _positive_int(meta["gpus_per_engine"], "gpus_per_engine", meta_file, MAX_GPUS_PER_REPLICA)
    else:
        gpus = 1
    tp = _positive_int(meta["tp"], "tp", meta_file, MAX_GPUS_PER_REPLICA) if "tp" in meta else gpus
    max_context = meta.get("max_context")
    if max_context is not None:
        max_context = _positive_int(max_context, "max_context", meta_file)

    order = np.argsort(p["prefill_isl"], kind="stable")
    return EngineProfile(
        path=str(folder),
        name=folder.resolve().name,
        model=_text(meta, "model", meta_file),
        system=_text(meta, "system", meta_file),
        backend=_text(meta, "backend", meta_file),
        tp=tp,
        gpus_per_engine=gpus,
        max_kv_tokens=max_kv,
        max_context=max_context,
        prefill_isl=p["prefill_isl"][order],
        prefill_ttft_ms=p["prefill_ttft"][order],
        prefill_thpt_per_gpu=p["prefill_thpt_per_gpu"][order],
        decode_kv_usage=d["x_kv_usage"],
        decode_context=d["y_context_length"],
        decode_itl_ms=d["z_itl"],
        decode_thpt_per_gpu=d["z_thpt_per_gpu"],
    )


def _read_json(file: Path) -> dict[str, Any]:
    """Parse a JSON object, turning every I/O or syntax failure into an InputError."""
    text = read_input_text(file)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc}", file=file) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object at the top level", file=file)
    return data


def _read_npz(file: Path) -> dict[str, Any]:
    """Load every array of an NPZ archive (no pickles: profiles are data, not code)."""
    try:
        with np.load(file, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise InputError("file not found", file=file) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"not a readable NPZ archive: {exc}", file=file) from None


def _positive_array(data: dict[str, Any], key: str, file: Path) -> np.ndarray:
    """A 1-D float array of at least two finite values in (0, MAX_PROFILE_VALUE]."""
    if key not in data:
        raise InputError("missing key", file=file, field=key)
    try:
        values = np.asarray(data[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("must be a list of numbers", file=file, field=key) from None
    if values.ndim != 1:
        raise InputError(f"must be a 1-D list (got {values.ndim}-D)", file=file, field=key)
    if values.size < 2:
        raise InputError(f"needs at least 2 points (got {values.size})", file=file, field=key)
    if not np.all(np.isfinite(values)):
        raise InputError("contains NaN or infinite values", file=file, field=key)
    if np.any(values <= 0):
        bad = float(values[values <= 0][0])
        raise InputError(f"values must be > 0 (got {bad:g})", file=file, field=key)
    if np.any(values > MAX_PROFILE_VALUE):
        bad = float(values[values > MAX_PROFILE_VALUE][0])
        raise InputError(f"values must be <= {MAX_PROFILE_VALUE:g} (got {bad:g})", file=file, field=key)
    return values


def _same_lengths(arrays: dict[str, np.ndarray], keys: tuple[str, ...], file: Path) -> None:
    """Parallel columns must describe the same points."""
    n = len(arrays[keys[0]])
    for key in keys[1:]:
        if len(arrays[key]) != n:
            raise InputError(f"length {len(arrays[key])} differs from {keys[0]} ({n})", file=file, field=key)


def _one_value(data: dict[str, Any], key: str, file: Path) -> Any:
    """A scalar that the Dynamo profiler may store as a one-element list or array."""
    if key not in data:
        raise InputError("missing key", file=file, field=key)
    value = data[key]
    if isinstance(value, (list, tuple, np.ndarray)):
        flat = np.asarray(value, dtype=object).ravel()
        if flat.size != 1:
            raise InputError(f"expected one value (got {flat.size})", file=file, field=key)
        value = flat[0]
    return value


def _positive_int(value: Any, key: str, file: Path | None, limit: float = MAX_PROFILE_VALUE) -> int:
    """A whole number in (0, ``limit``]; floats such as 437850.0 are accepted, booleans and
    fractions are not."""
    numeric = isinstance(value, (int, float, np.integer, np.floating))
    if isinstance(value, (bool, np.bool_)) or not numeric:
        raise InputError(f"must be a positive integer (got {value!r})", file=file, field=key)
    number = float(value)
    if not math.isfinite(number) or number <= 0 or number != int(number):
        raise InputError(f"must be a positive integer (got {value!r})", file=file, field=key)
    if number > limit:
        raise InputError(f"must be <= {limit:g} (got {value!r})", file=file, field=key)
    return int(number)


def _text(meta: dict[str, Any], key: str, file: Path) -> str:
    """An optional descriptive string; ``unknown`` when the profile does not say."""
    value = meta.get(key, "unknown")
    if not isinstance(value, str) or not value:
        raise InputError(f"must be a non-empty string (got {value!r})", file=file, field=key)
    return value
