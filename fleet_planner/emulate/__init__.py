"""An OpenAI-compatible streaming server whose latency follows an engine profile (``fleet-planner emulate``)."""
