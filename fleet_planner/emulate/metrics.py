"""Prometheus metrics of an emulated engine, under the names the local agent's default queries use
(``local_agent.config.PrometheusQueries`` / ``PrometheusHistograms``): vLLM engine metrics
(``vllm:*``), Dynamo KV statistics (``dynamo_component_kvstats_*``, 16-token blocks) labelled
``dynamo_namespace`` + ``dynamo_component``, and — when the emulator is its own frontend — Dynamo
frontend request metrics (``dynamo_frontend_*``) labelled ``dynamo_namespace``.

Each emulator has its own registry, so several can live in one process (tests, the demo).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fleet_planner.emulate.engine import Engine, IterationRecord

KV_BLOCK_TOKENS = 16
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 40)
_ITL_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.5)
_TOKEN_BUCKETS = tuple(float(2**i) for i in range(0, 18))


class EmulatorMetrics:
    """Engine gauges read live from the engine; histograms and counters fed per request/iteration."""

    def __init__(self, engine: Engine, *, namespace: str, component: str, model: str, frontend: bool):
        self.registry = CollectorRegistry()
        worker = {"dynamo_namespace": namespace, "dynamo_component": component, "model_name": model}
        names = list(worker)
        reg = self.registry

        def gauge(name: str, doc: str, read: object) -> None:
            Gauge(name, doc, names, registry=reg).labels(**worker).set_function(read)  # type: ignore[arg-type]

        gauge("vllm:num_requests_waiting", "requests queued, prompt not started", lambda: _waiting(engine))
        gauge("vllm:num_requests_running", "requests prefilling or decoding", lambda: _running(engine))
        gauge("vllm:kv_cache_usage_perc", "reserved KV share", lambda: engine.kv_reserved / engine.max_kv)
        gauge(
            "dynamo_component_kvstats_active_blocks",
            "KV blocks reserved",
            lambda: -(-engine.kv_reserved // KV_BLOCK_TOKENS),
        )
        gauge("dynamo_component_kvstats_total_blocks", "KV blocks", lambda: engine.max_kv // KV_BLOCK_TOKENS)
        gauge("fleet_planner_emulator_lag_seconds", "largest late delivery of an iteration", lambda: engine.lag_s)
        Gauge(
            "vllm:cache_config_info",
            "KV cache configuration",
            ["block_size", "num_gpu_blocks"],
            registry=reg,
        ).labels(block_size=str(KV_BLOCK_TOKENS), num_gpu_blocks=str(engine.max_kv // KV_BLOCK_TOKENS)).set(1)

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=reg).labels(**worker)

        self.prompt_tokens = hist("vllm:request_prompt_tokens", "prompt tokens per request", _TOKEN_BUCKETS)
        self.generation_tokens = hist("vllm:request_generation_tokens", "output tokens per request", _TOKEN_BUCKETS)
        self.engine_ttft = hist("vllm:time_to_first_token_seconds", "engine TTFT", _LATENCY_BUCKETS)
        self.engine_itl = hist("vllm:inter_token_latency_seconds", "gap between a request's tokens", _ITL_BUCKETS)
        self.iteration_tokens = hist("vllm:iteration_tokens_total", "tokens per iteration", _TOKEN_BUCKETS)
        self.success = Counter("vllm:request_success", "finished requests", names, registry=reg).labels(**worker)

        self.front = FrontendMetrics(reg, namespace=namespace, model=model) if frontend else None

    def on_iteration(self, record: IterationRecord) -> None:
        self.iteration_tokens.observe(record.tokens)
        for _ in range(record.decode_batch):
            self.engine_itl.observe(record.seconds)

    def on_arrival(self, input_tokens: int) -> None:
        self.prompt_tokens.observe(input_tokens)
        if self.front is not None:
            self.front.on_arrival(input_tokens)

    def on_finish(self, output_tokens: int, ttft_s: float | None, itl_s: float | None) -> None:
        """A request finished (``itl_s`` is None for one-token answers, ``ttft_s`` if it never started)."""
        self.success.inc()
        self.generation_tokens.observe(output_tokens)
        if ttft_s is not None:
            self.engine_ttft.observe(ttft_s)
        if self.front is not None:
            self.front.on_finish(output_tokens, ttft_s, itl_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class FrontendMetrics:
    """Dynamo frontend request metrics (``dynamo_frontend_*``, labelled ``dynamo_namespace`` and
    ``model``): what the agent's request-level queries read. An emulator that is its own frontend
    exports them; so does the demo's frontend in front of several emulators."""

    def __init__(self, registry: CollectorRegistry, *, namespace: str, model: str):
        labels = {"dynamo_namespace": namespace, "model": model}
        names = list(labels)

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=registry).labels(**labels)

        self.requests = Counter("dynamo_frontend_requests", "requests received", names, registry=registry).labels(
            **labels
        )
        self.input_tokens = hist("dynamo_frontend_input_sequence_tokens", "input tokens", _TOKEN_BUCKETS)
        self.output_tokens = hist("dynamo_frontend_output_sequence_tokens", "output tokens", _TOKEN_BUCKETS)
        self.ttft = hist("dynamo_frontend_time_to_first_token_seconds", "TTFT", _LATENCY_BUCKETS)
        self.itl = hist("dynamo_frontend_inter_token_latency_seconds", "mean ITL per request", _ITL_BUCKETS)

    def on_arrival(self, input_tokens: int) -> None:
        self.requests.inc()
        self.input_tokens.observe(input_tokens)

    def on_finish(self, output_tokens: int, ttft_s: float | None, itl_s: float | None) -> None:
        self.output_tokens.observe(output_tokens)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        if itl_s is not None:
            self.itl.observe(itl_s)


def _waiting(engine: Engine) -> int:
    return len(engine.waiting) + sum(1 for s in engine.prefilling if s.prefilled == 0)


def _running(engine: Engine) -> int:
    return len(engine.running) + sum(1 for s in engine.prefilling if s.prefilled > 0)
