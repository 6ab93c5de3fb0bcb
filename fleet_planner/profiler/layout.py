"""Writes measured points in the Dynamo profiler layout that :func:`fleet_planner.perf.load_profile`
reads: ``prefill_raw_data.json`` + ``decode_raw_data.json`` + ``meta.json``, the same arrays as
``selected_{prefill,decode}_interpolation/raw_data.npz``, and ``plots.html`` (TTFT vs input length,
ITL vs batch per context)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fleet_planner.errors import InputError
from fleet_planner.files import write_atomically
from fleet_planner.perf.profile import DECODE_JSON, DECODE_NPZ, META_JSON, PREFILL_JSON, PREFILL_NPZ


class PrefillPoint(BaseModel):
    """Single-request TTFT at one input length."""

    model_config = ConfigDict(frozen=True)

    isl: int = Field(gt=0)
    ttft_ms: float = Field(gt=0)


class DecodePoint(BaseModel):
    """Decode iteration time with ``batch`` sequences of ``context`` tokens (input + output/2)."""

    model_config = ConfigDict(frozen=True)

    context: float = Field(gt=0)
    batch: int = Field(gt=0)
    itl_ms: float = Field(gt=0)


class ProfileMeta(BaseModel):
    """``meta.json``: what was profiled and how."""

    model_config = ConfigDict(frozen=True)

    model: str
    system: str = "unknown"
    backend: str = "unknown"
    tp: int = Field(default=1, gt=0)
    gpus_per_engine: int = Field(default=1, gt=0)
    max_context: int = Field(gt=0)
    max_kv_tokens: int = Field(gt=0)
    source: str


def write_profile(
    folder: Path, meta: ProfileMeta, prefill: Sequence[PrefillPoint], decode: Sequence[DecodePoint]
) -> None:
    """Write the profile files (JSON, NPZ, meta) and the plots into ``folder``."""
    if len(prefill) < 2 or len({p.isl for p in prefill}) < 2:
        raise InputError(f"a profile needs prefill points at >= 2 input lengths (have {len(prefill)})", file=folder)
    if len(decode) < 2:
        raise InputError(f"a profile needs >= 2 decode points (have {len(decode)})", file=folder)
    prefill = sorted(prefill, key=lambda p: p.isl)
    decode = sorted(decode, key=lambda d: (d.context, d.batch))
    gpus = meta.gpus_per_engine
    pre = {
        "prefill_isl": [p.isl for p in prefill],
        "prefill_ttft": [p.ttft_ms for p in prefill],
        "prefill_thpt_per_gpu": [p.isl / (p.ttft_ms / 1000.0) / gpus for p in prefill],
    }
    dec: dict[str, Any] = {
        "x_kv_usage": [d.batch * d.context / meta.max_kv_tokens for d in decode],
        "y_context_length": [d.context for d in decode],
        "z_itl": [d.itl_ms for d in decode],
        "z_thpt_per_gpu": [d.batch * 1000.0 / d.itl_ms / gpus for d in decode],
        "max_kv_tokens": [meta.max_kv_tokens],
    }
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / PREFILL_JSON, pre)
    _write_json(folder / DECODE_JSON, dec)
    _write_json(folder / META_JSON, meta.model_dump())
    for relative, arrays in ((PREFILL_NPZ, pre), (DECODE_NPZ, dec)):
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        columns: dict[str, Any] = {key: np.asarray(value) for key, value in arrays.items()}
        np.savez(target, **columns)
    _write_plots(folder / "plots.html", meta, prefill, decode)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(data, indent=1) + "\n")


def _write_plots(path: Path, meta: ProfileMeta, prefill: Sequence[PrefillPoint], decode: Sequence[DecodePoint]) -> None:
    """One self-contained page (plotly.js inline, opens offline)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, subplot_titles=("TTFT vs input length", "ITL vs decode batch"))
    figure.add_trace(
        go.Scatter(x=[p.isl for p in prefill], y=[p.ttft_ms for p in prefill], mode="lines+markers", name="TTFT"),
        row=1,
        col=1,
    )
    for context in sorted({d.context for d in decode}):
        points = [d for d in decode if d.context == context]
        figure.add_trace(
            go.Scatter(
                x=[d.batch for d in points],
                y=[d.itl_ms for d in points],
                mode="lines+markers",
                name=f"context {context:g}",
            ),
            row=1,
            col=2,
        )
    figure.update_xaxes(title_text="input tokens", row=1, col=1)
    figure.update_yaxes(title_text="ms", row=1, col=1)
    figure.update_xaxes(title_text="running sequences", type="log", row=1, col=2)
    figure.update_yaxes(title_text="ms per token", row=1, col=2)
    figure.update_layout(title=f"{meta.model} ({meta.source})", template="plotly_white")
    path.write_text(figure.to_html(full_html=True, include_plotlyjs=True))
