"""Performance model: TTFT, prefill chunk cost and decode ITL interpolated from an engine profile.

The simulator calls ``ttft_ms`` / ``itl_ms`` once per event, so scalar calls take a pure-Python
path (``bisect`` on lists, a few multiplications: a few microseconds); arrays take a vectorised
numpy path that gives the same numbers. Raw profiles are noisy, so both surfaces are made monotone
once at construction: a planner that sees latency *fall* when load rises would size wrongly.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Any, overload

import numpy as np

from fleet_planner.perf.profile import EngineProfile

ArrayLike = np.ndarray | list[float] | tuple[float, ...]


class PerfModel:
    """Interpolated latency surfaces of one engine (one replica of ``gpus_per_engine`` GPUs).

    * TTFT vs ISL: piecewise linear through the measured points (running max), linear toward
      ``prefill_overhead_ms`` at 0 tokens, extrapolated above the largest ISL at the last
      measured per-token cost (warned once).
    * ITL vs (batch, context): per-context rows on a common batch grid, monotone in batch and in
      context; linear in batch, linear in log(context); clamped outside the measured range
      (warned once per kind). Below the smallest measured batch the smallest batch's ITL holds.
    """

    def __init__(self, profile: EngineProfile):
        self.profile = profile
        self.max_kv_tokens: int = profile.max_kv_tokens
        self.gpus_per_engine: int = profile.gpus_per_engine
        self.max_context: int | None = profile.max_context
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self._build_prefill()
        self._build_decode()

    def __repr__(self) -> str:
        p = self.profile
        return f"PerfModel({p.name!r}: {p.model} on {p.gpus_per_engine}x {p.system}, {p.backend} tp{p.tp})"

    # ----------------------------------------------------------------- construction

    def _build_prefill(self) -> None:
        """Knots (0, overhead), (isl_i, running-max TTFT_i) and the tail slope."""
        isl, ttft = _dedupe_max(self.profile.prefill_isl, self.profile.prefill_ttft_ms)
        ttft = np.maximum.accumulate(ttft)
        first_slope = (ttft[1] - ttft[0]) / (isl[1] - isl[0]) if len(isl) > 1 else 0.0
        overhead = float(min(max(ttft[0] - first_slope * isl[0], 0.0), ttft[0]))
        self.prefill_overhead_ms: float = overhead
        xs = np.concatenate(([0.0], isl))
        ys = np.concatenate(([overhead], ttft))
        slopes = np.diff(ys) / np.diff(xs)
        self._tail_slope = float(slopes[-1])
        self._pf_x = xs
        self._pf_y = ys
        self._pf_xl: list[float] = xs.tolist()
        self._pf_yl: list[float] = ys.tolist()
        self._pf_sl: list[float] = slopes.tolist()
        self._pf_xmax = float(xs[-1])
        self._pf_ymax = float(ys[-1])

    def _build_decode(self) -> None:
        """Grid G[context row, batch] of ITL, monotone along both axes."""
        p = self.profile
        batch = np.round(p.decode_batch, 6)
        contexts = np.unique(p.decode_context)
        grid = np.unique(batch)
        rows = np.empty((len(contexts), len(grid)))
        row_bmax = np.empty(len(contexts))
        for i, ctx in enumerate(contexts):
            sel = p.decode_context == ctx
            b, itl = _dedupe_max(batch[sel], p.decode_itl_ms[sel])
            itl = np.maximum.accumulate(itl)
            rows[i] = np.interp(grid, b, itl)  # flat below the first and above the last batch
            row_bmax[i] = b[-1]
        rows = np.maximum.accumulate(rows, axis=0)  # keeps each row monotone in batch
        log_ctx = np.log(contexts)
        self._ctx_min = float(contexts[0])
        self._ctx_max = float(contexts[-1])
        # A single row or batch value still needs two knots for the interpolation formulas.
        if len(contexts) == 1:
            rows = np.vstack((rows, rows))
            row_bmax = np.concatenate((row_bmax, row_bmax))
            log_ctx = np.concatenate((log_ctx, log_ctx + 1.0))
        if len(grid) == 1:
            rows = np.hstack((rows, rows))
            grid = np.concatenate((grid, grid + 1.0))
        self._lc = log_ctx
        self._bg = grid
        self._G = rows
        self._row_bmax = row_bmax
        self._lcl: list[float] = log_ctx.tolist()
        self._inv_dlc: list[float] = (1.0 / np.diff(log_ctx)).tolist()
        self._bgl: list[float] = grid.tolist()
        self._inv_db: list[float] = (1.0 / np.diff(grid)).tolist()
        self._Gl: list[list[float]] = rows.tolist()
        self._row_bmaxl: list[float] = row_bmax.tolist()
        self._n_ctx = len(log_ctx)
        self._n_b = len(grid)

    # ----------------------------------------------------------------- warnings

    def _warn(self, kind: str) -> None:
        """Record one human-readable note per kind of out-of-range query."""
        if kind in self._warned:
            return
        self._warned.add(kind)
        p = self.profile
        text = {
            "ttft_above": (
                f"input length above the profiled maximum ({self._pf_xmax:g} tokens): TTFT "
                "extrapolated at the last measured per-token cost "
                f"({self._tail_slope:.4g} ms/token)"
            ),
            "ctx_below": (
                f"decode context below the profiled minimum ({self._ctx_min:g} tokens): "
                "ITL clamped to the smallest context"
            ),
            "ctx_above": (
                f"decode context above the profiled maximum ({self._ctx_max:g} tokens): "
                "ITL clamped to the largest context"
            ),
            "batch_above": (
                "decode batch above the largest profiled batch at that context: "
                "ITL clamped to the largest measured batch"
            ),
        }[kind]
        self.warnings.append(f"{p.name}: {text}")

    # ----------------------------------------------------------------- prefill

    def _ttft1(self, x: float) -> float:
        """Scalar TTFT: one bisect on the knot list."""
        if x >= self._pf_xmax:
            if x > self._pf_xmax and "ttft_above" not in self._warned:
                self._warn("ttft_above")
            return self._pf_ymax + self._tail_slope * (x - self._pf_xmax)
        if x <= 0.0:
            return self.prefill_overhead_ms
        i = bisect_right(self._pf_xl, x) - 1
        return self._pf_yl[i] + self._pf_sl[i] * (x - self._pf_xl[i])

    def _ttft_vec(self, x: np.ndarray) -> np.ndarray:
        """Vector TTFT: np.interp inside the knots, linear tail above."""
        out = np.interp(x, self._pf_x, self._pf_y)
        above = x > self._pf_xmax
        if above.any():
            self._warn("ttft_above")
            out = np.where(above, self._pf_ymax + self._tail_slope * (x - self._pf_xmax), out)
        return out

    @overload
    def ttft_ms(self, isl: float) -> float: ...
    @overload
    def ttft_ms(self, isl: ArrayLike) -> np.ndarray: ...

    def ttft_ms(self, isl: Any) -> Any:
        """Time to first token of one request alone with ``isl`` input tokens, overhead included."""
        if isinstance(isl, (np.ndarray, list, tuple)):
            return self._ttft_vec(np.asarray(isl, dtype=np.float64))
        return self._ttft1(float(isl))

    @overload
    def prefill_chunk_ms(self, done: float, chunk: float) -> float: ...
    @overload
    def prefill_chunk_ms(self, done: ArrayLike | float, chunk: ArrayLike | float) -> np.ndarray: ...

    def prefill_chunk_ms(self, done: Any, chunk: Any) -> Any:
        """Variable cost of prefilling tokens [done, done+chunk) of one request, without overhead.

        Equals V(done+chunk) - V(done) with V = TTFT - overhead, so chunks add up exactly to the
        whole prompt's variable cost and later chunks cost more (attention grows with position).
        """
        if _is_array(done) or _is_array(chunk):
            start = np.asarray(done, dtype=np.float64)
            end = start + np.asarray(chunk, dtype=np.float64)
            return self._ttft_vec(end) - self._ttft_vec(start)
        first = float(done)
        return self._ttft1(first + float(chunk)) - self._ttft1(first)

    # ----------------------------------------------------------------- decode

    def _itl1(self, b: float, c: float) -> float:
        """Scalar ITL: two bisects and a bilinear blend on Python lists."""
        if c <= self._ctx_min:
            if c < self._ctx_min and "ctx_below" not in self._warned:
                self._warn("ctx_below")
            i, w = 0, 0.0
        elif c >= self._ctx_max:
            if c > self._ctx_max and "ctx_above" not in self._warned:
                self._warn("ctx_above")
            i, w = self._n_ctx - 2, 1.0
        else:
            lc = math.log(c)
            i = bisect_right(self._lcl, lc) - 1
            w = (lc - self._lcl[i]) * self._inv_dlc[i]
        if "batch_above" not in self._warned and (
            (w < 1.0 and b > self._row_bmaxl[i]) or (w > 0.0 and b > self._row_bmaxl[i + 1])
        ):
            self._warn("batch_above")
        bg = self._bgl
        if b <= bg[0]:
            j, u = 0, 0.0
        elif b >= bg[-1]:
            j, u = self._n_b - 2, 1.0
        else:
            j = bisect_right(bg, b) - 1
            u = (b - bg[j]) * self._inv_db[j]
        r0 = self._Gl[i]
        r1 = self._Gl[i + 1]
        lo = r0[j] + u * (r0[j + 1] - r0[j])
        hi = r1[j] + u * (r1[j + 1] - r1[j])
        return lo + w * (hi - lo)

    def _itl_vec(self, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Vector ITL: the same bilinear blend with searchsorted indices."""
        b, c = np.broadcast_arrays(b, c)
        if (c < self._ctx_min).any():
            self._warn("ctx_below")
        if (c > self._ctx_max).any():
            self._warn("ctx_above")
        lc = np.log(np.clip(c, self._ctx_min, self._ctx_max))
        i = np.clip(np.searchsorted(self._lc, lc, side="right") - 1, 0, self._n_ctx - 2)
        w = np.clip((lc - self._lc[i]) / (self._lc[i + 1] - self._lc[i]), 0.0, 1.0)
        over = ((w < 1.0) & (b > self._row_bmax[i])) | ((w > 0.0) & (b > self._row_bmax[i + 1]))
        if over.any():
            self._warn("batch_above")
        bc = np.clip(b, self._bg[0], self._bg[-1])
        j = np.clip(np.searchsorted(self._bg, bc, side="right") - 1, 0, self._n_b - 2)
        u = (bc - self._bg[j]) / (self._bg[j + 1] - self._bg[j])
        g = self._G
        lo = g[i, j] + u * (g[i, j + 1] - g[i, j])
        hi = g[i + 1, j] + u * (g[i + 1, j + 1] - g[i + 1, j])
        return lo + w * (hi - lo)

    @overload
    def itl_ms(self, batch: float, context: float) -> float: ...
    @overload
    def itl_ms(self, batch: ArrayLike | float, context: ArrayLike | float) -> np.ndarray: ...

    def itl_ms(self, batch: Any, context: Any) -> Any:
        """One decode iteration for ``batch`` running sequences of mean context ``context``."""
        if _is_array(batch) or _is_array(context):
            return self._itl_vec(np.asarray(batch, dtype=np.float64), np.asarray(context, dtype=np.float64))
        return self._itl1(float(batch), float(context))

    @overload
    def decode_tokens_per_s(self, batch: float, context: float) -> float: ...
    @overload
    def decode_tokens_per_s(self, batch: ArrayLike | float, context: ArrayLike | float) -> np.ndarray: ...

    def decode_tokens_per_s(self, batch: Any, context: Any) -> Any:
        """Output tokens/s of one engine: every running sequence emits one per iteration."""
        if _is_array(batch) or _is_array(context):
            return (
                np.asarray(batch, dtype=np.float64) * 1000.0 / self.itl_ms(np.asarray(batch, dtype=np.float64), context)
            )
        b = float(batch)
        return b * 1000.0 / self._itl1(b, float(context))

    @overload
    def max_batch(self, context: float) -> float: ...
    @overload
    def max_batch(self, context: ArrayLike) -> np.ndarray: ...

    def max_batch(self, context: Any) -> Any:
        """Sequences that fit in KV cache at ``context`` tokens each (a sequence holds >= 1)."""
        if _is_array(context):
            return self.max_kv_tokens / np.maximum(np.asarray(context, dtype=np.float64), 1.0)
        return self.max_kv_tokens / max(float(context), 1.0)


def _is_array(x: Any) -> bool:
    """Sequences take the vectorised path; anything else is treated as one number."""
    return isinstance(x, (np.ndarray, list, tuple))


def _dedupe_max(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by x and keep the largest y per repeated x, so interpolation knots are distinct."""
    keys, inverse = np.unique(x, return_inverse=True)
    values = np.full(len(keys), -np.inf)
    np.maximum.at(values, inverse, y)
    return keys, values
