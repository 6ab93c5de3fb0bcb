"""``profile live``: the round trip profile -> emulate -> profile, resumption, and misbehaving servers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from fleet_planner.perf import PerfModel, load_profile
from fleet_planner_cli import main

PROFILE = Path(__file__).resolve().parents[1] / "examples/profiles/llama3.1-8b_h100_vllm_tp1"
MODEL = "meta-llama/Meta-Llama-3.1-8B"
# What the Python HTTP stack on both sides, and a host busy with other work, add to one TTFT. It
# swamps 10% of a short prompt's TTFT (7.6 ms at 128 tokens), so those are checked to within it.
HOST_NOISE_MS = 5.0


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``fleet-planner emulate`` as a real process, as a user would run it."""
    ready = tmp_path_factory.mktemp("emu") / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "fleet_planner_cli", "emulate", "--profile", str(PROFILE), "--port", "0"]
        + ["--ready-file", str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert process.poll() is None, "emulator exited"
            assert time.monotonic() < deadline, "emulator did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{json.loads(ready.read_text())['port']}"
    finally:
        process.terminate()
        process.wait(10)


def _profile(url: str, out: Path, *extra: str) -> int:
    return main(["profile", "live", "--url", url, "--model", MODEL, "--out", str(out), "--no-progress", *extra])


def test_round_trip_recovers_ttft_and_itl(emulator: str, tmp_path: Path) -> None:
    out = tmp_path / "prof"
    assert _profile(emulator, out, "--quick", "--repeats", "5", "--prefill-isl", "128,1024,4096,8192,24576") == 0
    source = PerfModel(load_profile(PROFILE))
    measured = load_profile(out)  # the output is a loadable profile
    assert source.max_kv_tokens - 16 < measured.max_kv_tokens <= source.max_kv_tokens  # whole 16-token blocks
    assert measured.max_context == 32768
    for isl, ttft in zip(measured.prefill_isl, measured.prefill_ttft_ms, strict=True):
        expected = source.ttft_ms(float(isl))
        assert abs(ttft - expected) <= max(0.10 * expected, HOST_NOISE_MS), (isl, ttft, expected)
        if isl >= 4096:
            assert ttft == pytest.approx(expected, rel=0.10)
    assert len(measured.decode_itl_ms) == 6
    for batch, context, itl in zip(measured.decode_batch, measured.decode_context, measured.decode_itl_ms, strict=True):
        assert itl == pytest.approx(source.itl_ms(float(batch), float(context)), rel=0.10)
    for name in ("selected_prefill_interpolation/raw_data.npz", "selected_decode_interpolation/raw_data.npz"):
        assert (out / name).exists()
    assert "plotly" in (out / "plots.html").read_text()[:200000].lower()


def test_an_interrupted_sweep_resumes_and_a_changed_one_is_refused(emulator: str, tmp_path: Path) -> None:
    out = tmp_path / "prof"
    grid = ["--prefill-isl", "256,512", "--decode-isl", "512", "--concurrency", "1,2", "--osl", "24", "--repeats", "1"]
    assert _profile(emulator, out, *grid) == 0
    lines = (out / "measurements.jsonl").read_text().splitlines()
    assert len(lines) == 4
    # interrupted after two points, the last line half written
    (out / "measurements.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    assert _profile(emulator, out, *grid) == 0
    again = (out / "measurements.jsonl").read_text().splitlines()
    assert again[:2] == lines[:2]  # kept, not measured again
    keys = [json.loads(line)["key"] for line in again if line.endswith("}")]
    assert sorted(keys) == sorted(json.loads(line)["key"] for line in lines)
    assert load_profile(out).prefill_isl.tolist() == [256, 512]

    changed = [*grid[:-2], "--repeats", "2"]
    assert _profile(emulator, out, *changed) == 2
    assert _profile(emulator, out, *changed, "--restart") == 0


def test_unreachable_server_and_wrong_model(emulator: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _profile("http://127.0.0.1:9", tmp_path / "a", "--quick") == 2
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err
    assert main(["profile", "live", "--url", emulator, "--model", "nope", "--out", str(tmp_path / "b")]) == 2
    assert f"serves ['{MODEL}'], not 'nope'" in capsys.readouterr().err
    assert _profile("ftp://x", tmp_path / "c") == 2
    assert "--url" in capsys.readouterr().err
    assert _profile(emulator, tmp_path / "d", "--concurrency", "1,x") == 2
    assert "comma-separated integers" in capsys.readouterr().err


class _BadServer:
    """A server that misbehaves in one chosen way."""

    def __init__(self, mode: str):
        self.mode = mode
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/v1/models", self._models),
                web.get("/metrics", self._metrics),
                web.post("/v1/completions", self._complete),
            ]
        )

    async def _models(self, _r: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": MODEL, "max_model_len": 4096}]})

    async def _metrics(self, _r: web.Request) -> web.Response:
        return web.Response(text='vllm:cache_config_info{block_size="16",num_gpu_blocks="1000"} 1.0\n')

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.mode == "http500":
            return web.json_response({"error": {"message": "engine crashed"}}, status=500)
        if self.mode == "json":
            return web.json_response({"choices": [{"text": "x"}]})
        if self.mode == "slow":
            await web.asyncio.sleep(5)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        tokens = body["max_tokens"] if self.mode != "short" else 1
        for _ in range(tokens):
            await response.write(b'data: {"choices": [{"text": "a"}]}\n\n')
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.mark.parametrize(
    ("mode", "phrase"),
    [
        ("http500", "HTTP 500: engine crashed"),
        ("json", "non-streaming application/json"),
        ("short", "asked for 2 output tokens, got 1"),
        ("slow", "not finished within 0.5 s"),
    ],
)
async def test_misbehaving_servers_get_clear_errors(mode: str, phrase: str, tmp_path: Path) -> None:
    from fleet_planner.profiler import live
    from fleet_planner.profiler.client import ServerError

    runner = web.AppRunner(_BadServer(mode).app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        client, session = await live.open_client(url, MODEL, 0.5)
        async with session:
            info = await client.probe()
            assert info.kv_tokens == 16000
            assert info.max_context == 4096
            with pytest.raises(ServerError, match=phrase.replace("(", r"\(")):
                await client.stream(16, 2)
    finally:
        await runner.cleanup()
