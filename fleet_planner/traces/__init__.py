"""Request-level traces: readers for public formats, synthesis from rate series, transformations."""

from fleet_planner.traces.readers import TRACE_FORMATS, read_trace, write_mooncake_jsonl
from fleet_planner.traces.synth import RateSeries, read_rate_series, synthesize, synthesize_from_rates
from fleet_planner.traces.trace import Trace
from fleet_planner.traces.transform import scale_trace

__all__ = [
    "TRACE_FORMATS",
    "RateSeries",
    "Trace",
    "read_rate_series",
    "read_trace",
    "scale_trace",
    "synthesize",
    "synthesize_from_rates",
    "write_mooncake_jsonl",
]
