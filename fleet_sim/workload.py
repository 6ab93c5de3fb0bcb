"""Traffic for a scenario: each endpoint's trace, loaded or synthesised, merged into one arrival stream."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fleet_planner.errors import InputError
from fleet_planner.traces import Trace
from fleet_planner.traces.readers import read_trace
from fleet_planner.traces.synth import synthesize_from_rates
from fleet_planner.traces.transform import scale_trace


@dataclass(frozen=True)
class Workload:
    """All requests of a run, sorted by arrival; ``endpoint[i]`` indexes ``endpoints``."""

    endpoints: list[str]
    arrival_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    endpoint: np.ndarray
    # Per request (merged order): Mooncake prefix-block ids (512 tokens a block), or None for a
    # request without them; the whole field is None when no endpoint's trace has them.
    hash_ids: list[list[int] | None] | None = None

    def __len__(self) -> int:
        return len(self.arrival_s)

    def trace(self, endpoint: str) -> Trace:
        """One endpoint's requests, after scaling and truncation, without prefix ids. Taken from
        the merged columns rather than kept beside them (146 MB for a day of diurnal-two-tenant):
        the merge is a stable sort, so each endpoint's requests keep their own order."""
        mine = self.endpoint == self.endpoints.index(endpoint)
        return Trace(self.arrival_s[mine], self.input_tokens[mine], self.output_tokens[mine], source=endpoint)


def _formats_for(path: str) -> str:
    return "mooncake" if path.endswith(".jsonl") else "azure"


def load_endpoint_trace(source, *, duration_s: float, seed: int, where: str) -> Trace:
    """Read or synthesise one endpoint's trace and apply its rate/time scaling and offset."""
    if source.synth is not None:
        synth = source.synth
        lengths_path = str(synth.lengths)
        lengths = read_trace(lengths_path, synth.lengths_format or _formats_for(lengths_path))
        trace = synthesize_from_rates(
            synth.rate,
            lengths=lengths,
            peak_rps=synth.peak_rps,
            start_s=synth.start_s,
            duration_s=duration_s / source.time_scale,
            seed=seed,
            arrival=synth.arrival,
        )
    else:
        trace = read_trace(source.path, source.format, source.select)
    try:
        trace = scale_trace(
            trace,
            start_s=source.start_s,
            rate_scale=source.rate_scale,
            time_scale=source.time_scale,
            offset_s=source.offset_s,
            duration_s=duration_s,
            seed=seed,
        )
    except ValueError as exc:
        raise InputError(str(exc), field=where) from exc
    return trace


def build_workload(scenario) -> Workload:
    """Every endpoint's traffic over the scenario's duration, merged and sorted by arrival."""
    endpoint_configs = scenario.endpoint_configs()
    names = sorted(endpoint_configs)
    traces: dict[str, Trace] = {}
    for index, name in enumerate(names):
        _, source = endpoint_configs[name]
        traces[name] = load_endpoint_trace(
            source, duration_s=scenario.duration_s, seed=scenario.seed * 1000 + index, where=f"endpoint {name}: trace"
        )
    arrival = np.concatenate([traces[n].arrival_s for n in names]) if names else np.zeros(0)
    inputs = np.concatenate([traces[n].input_tokens for n in names]) if names else np.zeros(0, np.int64)
    outputs = np.concatenate([traces[n].output_tokens for n in names]) if names else np.zeros(0, np.int64)
    endpoint = (
        np.concatenate([np.full(len(traces[n]), i, np.int32) for i, n in enumerate(names)])
        if names
        else np.zeros(0, np.int32)
    )
    order = np.argsort(arrival, kind="stable")
    hash_ids = None
    if any(traces[n].hash_ids is not None for n in names):
        merged: list[list[int] | None] = []
        for n in names:
            ids = traces[n].hash_ids
            merged.extend(ids if ids is not None else [None] * len(traces[n]))
        hash_ids = [merged[i] or None for i in order.tolist()]
    return Workload(
        endpoints=names,
        arrival_s=arrival[order],
        input_tokens=inputs[order],
        output_tokens=outputs[order],
        endpoint=endpoint[order],
        hash_ids=hash_ids,
    )
