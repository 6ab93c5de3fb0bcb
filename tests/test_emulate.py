"""The emulated engine: OpenAI wire format, profile timing, KV admission, metrics the agent queries, drain."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from fleet_planner.emulate.engine import Engine, Sequence
from fleet_planner.emulate.server import EmulatorServer
from fleet_planner.knobs import EngineKnobs
from fleet_planner.perf import PerfModel, load_profile
from local_agent.config import PrometheusHistograms, PrometheusQueries

PROFILE = Path(__file__).resolve().parents[1] / "examples/profiles/llama3.1-8b_h100_vllm_tp1"
MODEL = "meta-llama/Meta-Llama-3.1-8B"


@asynccontextmanager
async def serving(server: EmulatorServer) -> AsyncIterator[str]:
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _server(**kwargs: object) -> EmulatorServer:
    return EmulatorServer(PerfModel(load_profile(PROFILE)), served_model=MODEL, **kwargs)  # type: ignore[arg-type]


async def _events(response: aiohttp.ClientResponse) -> list[object]:
    out: list[object] = []
    async for line in response.content:
        line = line.strip()
        if line.startswith(b"data: "):
            payload = line[6:]
            out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out


async def test_streaming_completion_has_one_chunk_per_token_then_usage_and_done() -> None:
    async with serving(_server()) as url, aiohttp.ClientSession() as session:
        body = {
            "model": MODEL,
            "prompt": [7] * 100,
            "max_tokens": 5,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with session.post(url + "/v1/completions", json=body) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            events = await _events(response)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict) and e["choices"]]
    assert [c["choices"][0]["text"] for c in chunks] == [" tok"] * 5
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 4 + ["length"]
    usage = events[-2]
    assert isinstance(usage, dict)
    assert usage["usage"] == {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105}


async def test_chat_counts_words_and_answers_whole_or_streamed() -> None:
    async with serving(_server()) as url, aiohttp.ClientSession() as session:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 3}
        async with session.post(url + "/v1/chat/completions", json=body) as response:
            whole = await response.json()
        async with session.post(url + "/v1/chat/completions", json=body | {"stream": True}) as response:
            events = await _events(response)
    assert whole["usage"]["prompt_tokens"] == 3
    assert whole["choices"][0]["message"]["content"] == " tok tok tok"
    deltas = [e["choices"][0]["delta"] for e in events if isinstance(e, dict)]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert [d["content"] for d in deltas[1:]] == [" tok"] * 3


@pytest.mark.parametrize(
    ("body", "status", "phrase"),
    [
        ({"model": "other", "prompt": "x"}, 404, "does not exist"),
        ({"model": MODEL, "prompt": [1] * 32760, "max_tokens": 100}, 400, "maximum context length is 32768"),
        ({"model": MODEL, "prompt": ["a", "b"]}, 400, "one prompt per request"),
        ({"model": MODEL, "prompt": "a", "n": 2}, 400, "n:"),
        ({"model": MODEL, "prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
        ({"prompt": "a"}, 400, "model"),
    ],
)
async def test_bad_requests_get_openai_errors(body: dict[str, object], status: int, phrase: str) -> None:
    async with (
        serving(_server()) as url,
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/completions", json=body) as response,
    ):
        assert response.status == status
        error = (await response.json())["error"]
    assert phrase in error["message"]
    assert error["code"] == status


async def test_invalid_json_and_models_and_health() -> None:
    async with serving(_server()) as url, aiohttp.ClientSession() as session:
        async with session.post(url + "/v1/completions", data=b"{nope") as response:
            assert response.status == 400
        async with session.get(url + "/v1/models") as response:
            models = await response.json()
        async with session.get(url + "/health") as response:
            assert response.status == 200
    assert models["data"][0]["id"] == MODEL
    assert models["data"][0]["max_model_len"] == 32768


async def test_ttft_and_itl_follow_the_profile() -> None:
    """Engine-side timing (no HTTP): a 4096-token prompt alone, then 8 sequences decoding together."""
    model = PerfModel(load_profile(PROFILE))
    engine = Engine(model)
    engine.start()
    try:
        times: list[float] = []
        done = asyncio.Event()

        def on_token(last: bool) -> None:
            times.append(time.monotonic())
            if last:
                done.set()

        seq = Sequence(4096, 2, on_token, time.monotonic())
        engine.submit(seq)
        await done.wait()
        assert seq.t_first is not None
        assert (seq.t_first - seq.arrival) * 1000 == pytest.approx(model.ttft_ms(4096), rel=0.05)

        stamps: list[list[float]] = [[] for _ in range(8)]
        finished = asyncio.Event()
        left = [8]

        def make(i: int) -> Callable[[bool], None]:
            def on_token(last: bool) -> None:
                stamps[i].append(time.monotonic())
                if last:
                    left[0] -= 1
                    if not left[0]:
                        finished.set()

            return on_token

        for i in range(8):
            engine.submit(Sequence(1000, 40, make(i), time.monotonic()))
        await finished.wait()
    finally:
        await engine.stop()
    # after the first tokens all 8 decode together: gaps are ITL(8, 1000 + 40/2)
    gaps = np.diff(stamps[0][2:])
    assert np.median(gaps) * 1000 == pytest.approx(model.itl_ms(8, 1020), rel=0.1)


async def test_speed_compresses_every_iteration() -> None:
    """``speed`` 4: a 4096-token prefill takes a quarter of the profile's TTFT, and an engine
    reports it cannot run slower than real time."""
    model = PerfModel(load_profile(PROFILE))
    engine = Engine(model, speed=4)
    engine.start()
    try:
        done = asyncio.Event()
        seq = Sequence(4096, 1, lambda last: done.set(), time.monotonic())
        engine.submit(seq)
        await done.wait()
    finally:
        await engine.stop()
    assert seq.t_first is not None
    assert (seq.t_first - seq.arrival) * 1000 == pytest.approx(model.ttft_ms(4096) / 4, rel=0.1)
    with pytest.raises(ValueError, match="speed"):
        Engine(model, speed=0)


def test_emulate_rejects_a_bad_speed_or_startup(capsys: pytest.CaptureFixture[str]) -> None:
    from fleet_planner_cli import main

    assert main(["emulate", "--profile", str(PROFILE), "--port", "0", "--speed", "0"]) == 2
    assert "--speed" in capsys.readouterr().err
    assert main(["emulate", "--profile", str(PROFILE), "--port", "0", "--startup-s", "-1"]) == 2
    assert "--startup-s" in capsys.readouterr().err


async def test_kv_capacity_makes_requests_wait() -> None:
    model = PerfModel(load_profile(PROFILE))
    engine = Engine(model, EngineKnobs(max_num_seqs=1))
    engine.start()
    try:
        first_token: dict[int, float] = {}
        finished: dict[int, float] = {}
        done = asyncio.Event()

        def track(i: int) -> Callable[[bool], None]:
            def on_token(last: bool) -> None:
                first_token.setdefault(i, time.monotonic())
                if last:
                    finished[i] = time.monotonic()
                    if len(finished) == 2:
                        done.set()

            return on_token

        engine.submit(Sequence(100, 20, track(0), time.monotonic()))
        engine.submit(Sequence(100, 20, track(1), time.monotonic()))
        assert len(engine.waiting) == 1  # the batch cap of 1 holds the second back
        await done.wait()
    finally:
        await engine.stop()
    assert first_token[1] >= finished[0]


def _metric_names(template: str) -> set[str]:
    return {name for name in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", template) if name not in {"sum", "rate"}}


async def test_metrics_cover_every_default_agent_query() -> None:
    async with serving(_server(namespace="dep")) as url, aiohttp.ClientSession() as session:
        body = {"model": MODEL, "prompt": "a b c", "max_tokens": 4}
        async with session.post(url + "/v1/completions", json=body) as response:
            await response.read()
        async with session.get(url + "/metrics") as response:
            text = await response.text()
    exported = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.MULTILINE))
    wanted: set[str] = set()
    for template in PrometheusQueries().model_dump().values():
        if template is not None:  # off by default (a gateway's metric, not an engine's)
            wanted |= _metric_names(template) - {"increase"}
    for metric in PrometheusHistograms().model_dump().values():
        wanted |= {f"{metric}_bucket", f"{metric}_sum", f"{metric}_count"}
    assert wanted <= exported, wanted - exported
    assert 'dynamo_frontend_requests_total{dynamo_namespace="dep"' in text
    assert re.search(r"^dynamo_frontend_output_sequence_tokens_sum\{[^}]*\} 4\.0$", text, re.MULTILINE)


async def test_drain_finishes_in_flight_and_refuses_new_work() -> None:
    server = _server()
    async with serving(server) as url, aiohttp.ClientSession() as session:
        body = {"model": MODEL, "prompt": [1] * 64, "max_tokens": 30, "stream": True}
        async with session.post(url + "/v1/completions", json=body) as response:
            drained = asyncio.create_task(server.drain())
            await asyncio.sleep(0.01)
            async with session.post(url + "/v1/completions", json=body) as refused:
                assert refused.status == 503
            async with session.get(url + "/health") as health:
                assert health.status == 503
            assert not drained.done()
            events = await _events(response)
        await asyncio.wait_for(drained, 5)
    assert sum(1 for e in events if isinstance(e, dict) and e["choices"]) == 30
