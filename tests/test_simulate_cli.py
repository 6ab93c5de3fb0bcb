"""``fleet-planner simulate``, ``bench`` and ``trace synth`` from the command line: the output files
and their keys, the overrides, the fidelity of the closed-loop bench, and one clear error line
(file + field, exit code 2) for every kind of malformed input."""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleet_planner.traces.readers import read_trace
from fleet_planner_cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
AZURE_DISAGG = EXAMPLES / "azure-disagg" / "scenario.yaml"
TRACES = EXAMPLES / "traces"
H200 = EXAMPLES / "profiles" / "llama3.1-8b_h200_vllm_tp1"
TRTLLM_H100 = EXAMPLES / "profiles" / "llama3.1-8b_h100_trtllm_tp1"


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------
# simulate: outputs and overrides
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def azure_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("azure") / "out"
    code = main(["simulate", str(AZURE_DISAGG), "--out", str(out), "--duration", "2m", "--no-progress"])
    assert code == 0
    return out, ""


def test_simulate_writes_the_four_outputs(azure_run) -> None:
    out, _ = azure_run
    for name in ("summary.json", "decisions.jsonl", "timeline.csv", "report.html"):
        assert (out / name).is_file(), name
    for name in ("summary.json", "timeline.csv", "report.html"):
        assert (out / name).stat().st_size > 0, name


def test_summary_has_the_required_keys(azure_run) -> None:
    out, _ = azure_run
    summary = json.loads((out / "summary.json").read_text())
    assert {"fleet", "endpoints", "deployments", "tenants", "simulated_seconds", "wall_seconds"} <= set(summary)
    fleet = summary["fleet"]
    assert {
        "gpu_hours",
        "max_gpus_in_use",
        "gpu_inventory",
        "budget_violations",
        "requests",
        "completed",
        "rejected",
        "unfinished",
        "slo_attainment",
    } <= set(fleet)
    assert fleet["gpu_inventory"] == {"h200": 16}
    assert fleet["requests"] == fleet["completed"] + fleet["rejected"] + fleet["unfinished"] > 1000
    assert 0 <= fleet["slo_attainment"] <= 1
    assert summary["simulated_seconds"] == 120
    (endpoint,) = summary["endpoints"].values()
    assert {"requests", "slo_attainment", "ttft_ms", "itl_ms"} <= set(endpoint)
    chat = summary["deployments"]["chat"]
    assert {
        "tenant",
        "endpoint",
        "requests",
        "completed",
        "rejected",
        "unfinished",
        "slo_attainment",
        "ttft_ms",
        "itl_ms",
        "gpu_hours",
        "scale_events",
    } <= set(chat)
    assert (chat["tenant"], chat["endpoint"]) == ("acme", "llama-8b-chat")
    assert set(chat["ttft_ms"]) == set(chat["itl_ms"]) == {"p50", "p90", "p99"}
    assert chat["ttft_ms"]["p50"] <= chat["ttft_ms"]["p90"] <= chat["ttft_ms"]["p99"]
    assert summary["tenants"]["acme"]["gpu_hours"] == pytest.approx(fleet["gpu_hours"])
    assert {"slo_attainment", "gpu_hours"} <= set(summary["tenants"]["acme"])


def test_decisions_and_timeline_files_are_well_formed(azure_run) -> None:
    out, _ = azure_run
    decisions = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    for d in decisions:
        assert set(d) == {"time_s", "deployment", "pool", "from", "to", "reason"}
        assert d["deployment"] == "chat" and d["pool"] in ("prefill", "decode") and d["from"] != d["to"]
    with (out / "timeline.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["pool"] for r in rows} == {"prefill", "decode"}
    # A row per window scraped 15 s before each tick, and the run's last.
    assert {float(r["time_s"]) for r in rows} == {15.0, 45.0, 75.0, 105.0, 120.0}
    html = (out / "report.html").read_text()
    assert "<html" in html.lower() and "plotly" in html.lower()
    assert '<script src="http' not in html  # self-contained


def test_simulate_overrides_policy_seed_and_duration(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        [
            "simulate",
            str(AZURE_DISAGG),
            "--out",
            str(out),
            "--duration",
            "90s",
            "--seed",
            "3",
            "--policy",
            "oracle",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["policy"], summary["seed"], summary["simulated_seconds"]) == ("oracle", 3, 90)
    assert summary["clairvoyant"] is True
    assert "(clairvoyant)" in stdout and str(out / "report.html") in stdout
    static = tmp_path / "static"
    assert (
        main(
            [
                "simulate",
                str(AZURE_DISAGG),
                "--out",
                str(static),
                "--duration",
                "90s",
                "--seed",
                "3",
                "--policy",
                "static",
                "--no-progress",
            ]
        )
        == 0
    )
    static_summary = json.loads((static / "summary.json").read_text())
    assert static_summary["policy"] == "static" and static_summary["clairvoyant"] is False
    assert (static / "decisions.jsonl").read_text() == ""  # static never changes a target
    # Same seed: same traffic, whatever the policy.
    assert static_summary["fleet"]["requests"] == summary["fleet"]["requests"]


def test_mixed_fleet_accounts_per_endpoint_deployment_and_tenant(tmp_path: Path) -> None:
    out = tmp_path / "mixed"
    assert (
        main(
            [
                "simulate",
                str(EXAMPLES / "mixed-fleet" / "scenario.yaml"),
                "--out",
                str(out),
                "--duration",
                "1m",
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    deployments, endpoints, tenants = summary["deployments"], summary["endpoints"], summary["tenants"]
    assert set(deployments) == {"chat-h200", "chat-h100", "nightly"}
    # The shared endpoint's traffic is split over its two deployments, both of which get some.
    # (Requests rejected at admission may or may not be charged to a deployment: see
    # test_engine.py::test_rejections_are_charged_to_the_deployment.)
    assert deployments["chat-h200"]["requests"] > 0 and deployments["chat-h100"]["requests"] > 0
    shared = deployments["chat-h200"]["requests"] + deployments["chat-h100"]["requests"]
    for served, endpoint in (
        (shared, endpoints["llama-8b"]),
        (deployments["nightly"]["requests"], endpoints["llama-8b-batch"]),
    ):
        assert endpoint["requests"] - endpoint["rejected"] <= served <= endpoint["requests"]
    assert sum(t["gpu_hours"] for t in tenants.values()) == pytest.approx(summary["fleet"]["gpu_hours"])
    assert tenants["acme"]["gpu_hours"] == pytest.approx(
        deployments["chat-h200"]["gpu_hours"] + deployments["chat-h100"]["gpu_hours"]
    )
    # static: the initial replicas for one minute (h200: 2 + 2, h100: 1 + 1).
    assert summary["fleet"]["gpu_hours"] == pytest.approx(6 / 60)


def test_seed_changes_the_traffic(tmp_path: Path) -> None:
    counts = []
    for seed in (1, 2):
        out = tmp_path / f"s{seed}"
        assert (
            main(
                [
                    "simulate",
                    str(AZURE_DISAGG),
                    "--out",
                    str(out),
                    "--duration",
                    "60s",
                    "--seed",
                    str(seed),
                    "--policy",
                    "static",
                    "--no-progress",
                ]
            )
            == 0
        )
        counts.append(json.loads((out / "summary.json").read_text())["fleet"]["requests"])
    assert counts[0] != counts[1]  # rate_scale 4 draws its jittered copies from the seed


def test_compare_replays_each_policy_and_prints_them_side_by_side(tmp_path: Path, capsys) -> None:
    """The README's first command, on two simulated minutes: global (agents + planner) beside
    static-peak, one output folder per policy, the reports last."""
    out = tmp_path / "cmp"
    assert main(["compare", str(EXAMPLES / "shortage" / "scenario.yaml"), "--out", str(out), "--duration", "2m"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in ("global", "static-peak")}
    assert set(rows) == {"global", "static-peak"} and "1.00x" in rows["global"]
    assert sum("per tenant: acme" in line for line in lines) == 2
    assert lines[-2:] == [f"report: {out / 'global' / 'report.html'}", f"report: {out / 'static-peak' / 'report.html'}"]
    for policy in ("global", "static-peak"):
        summary = json.loads((out / policy / "summary.json").read_text())
        assert summary["policy"] == policy and (out / policy / "report.html").exists()
    assert main(["compare", str(EXAMPLES / "shortage" / "scenario.yaml"), "--out", str(out), "--policies", "nope"]) == 2
    twice = ["--policies", "static", "static"]  # two workers would write OUT/static at once
    assert (
        main(["compare", str(EXAMPLES / "shortage" / "scenario.yaml"), "--out", str(tmp_path / "twice"), *twice]) == 2
    )
    assert "given more than once: static" in capsys.readouterr().err and not (tmp_path / "twice").exists()


def test_console_script_runs_and_fails_with_exit_code_2(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("fleet-planner")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "fleet_planner_cli"]
    ok = subprocess.run(
        command + ["simulate", str(AZURE_DISAGG), "--out", str(tmp_path / "o"), "--duration", "10s"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert "report:" in ok.stdout
    bad = subprocess.run(
        command + ["simulate", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o2")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "missing.yaml" in bad.stderr


def test_a_benchmark_script_fails_on_bad_input_with_one_line_and_exit_code_2() -> None:
    """The benchmark scripts end like the program: a scenario that cannot run under the asked
    policy (no tenant policy file for ``global``) is one line, not a traceback."""
    bad = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_policies.py"), str(AZURE_DISAGG), "--policies", "global"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "planner.policy_file" in bad.stderr and "Traceback" not in bad.stderr


# ---------------------------------------------------------------------------------------------
# malformed inputs: exit code 2, one stderr line naming the file and the field
# ---------------------------------------------------------------------------------------------
GOOD_TRACE = "arrival_s,input_tokens,output_tokens\n0.5,100,10\n1.5,200,20\n2.5,300,30\n"


def write_inputs(tmp_path: Path) -> tuple[Path, dict]:
    """A small valid scenario with its own copies of a trace and a profile, ready to be broken."""
    (tmp_path / "trace.csv").write_text(GOOD_TRACE)
    shutil.copytree(H200, tmp_path / "profile")
    data = {
        "name": "broken",
        "duration": "1m",
        "seed": 1,
        "gpus": {"h200": 4},
        "planner": {"policy": "static", "interval_s": 30},
        "deployments": [
            {
                "name": "chat",
                "tenant": "acme",
                "endpoint": "chat",
                "mode": "agg",
                "sla": {"ttft_ms": 500, "itl_ms": 50},
                "trace": {"path": "trace.csv", "format": "csv"},
                "pools": {"agg": {"profile": "profile", "gpu_type": "h200", "min": 1, "max": 2, "initial": 1}},
            }
        ],
    }
    return tmp_path / "scenario.yaml", data


def _set(data: dict, path: str, value) -> None:
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[keys[-1]] = value


def _delete(data: dict, path: str) -> None:
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    del node[keys[-1]]


def _edit_json(file: Path, edit) -> None:
    data = json.loads(file.read_text())
    edit(data)
    file.write_text(json.dumps(data))


# (id, how to break the inputs, file named in the error, field named in the error)
SCENARIO_CASES = [
    ("missing-gpus", lambda d: _delete(d, "gpus"), "scenario.yaml", "gpus"),
    (
        "missing-pool-max",
        lambda d: _delete(d, "deployments.0.pools.agg.max"),
        "scenario.yaml",
        "deployments[0].pools.agg.max",
    ),
    (
        "negative-min",
        lambda d: _set(d, "deployments.0.pools.agg.min", -1),
        "scenario.yaml",
        "deployments[0].pools.agg.min",
    ),
    (
        "negative-startup",
        lambda d: _set(d, "deployments.0.pools.agg.startup_s", -5),
        "scenario.yaml",
        "deployments[0].pools.agg.startup_s",
    ),
    (
        "negative-rate-scale",
        lambda d: _set(d, "deployments.0.trace.rate_scale", -2),
        "scenario.yaml",
        "deployments[0].trace.rate_scale",
    ),
    (
        "nan-ttft",
        lambda d: _set(d, "deployments.0.sla.ttft_ms", math.nan),
        "scenario.yaml",
        "deployments[0].sla.ttft_ms",
    ),
    ("nan-duration", lambda d: _set(d, "duration", math.nan), "scenario.yaml", "duration"),
    (
        "unknown-format",
        lambda d: _set(d, "deployments.0.trace.format", "parquet"),
        "scenario.yaml",
        "deployments[0].trace.format",
    ),
    ("unknown-policy", lambda d: _set(d, "planner.policy", "magic"), "scenario.yaml", "planner.policy"),
    (
        "missing-trace-file",
        lambda d: _set(d, "deployments.0.trace.path", "nope.csv"),
        "scenario.yaml",
        "deployments[0].trace.path",
    ),
    (
        "missing-profile-dir",
        lambda d: _set(d, "deployments.0.pools.agg.profile", "nope"),
        "scenario.yaml",
        "deployments[0].pools.agg.profile",
    ),
]

TRACE_CASES = [
    ("missing-column", "arrival_s,input_tokens\n0.5,100\n", "output_tokens"),
    ("negative-tokens", "arrival_s,input_tokens,output_tokens\n0.5,-100,10\n", "input_tokens"),
    ("nan-arrival", "arrival_s,input_tokens,output_tokens\nnan,100,10\n", "arrival_s"),
    ("not-a-number", "arrival_s,input_tokens,output_tokens\n0.5,many,10\n", "input_tokens"),
]

PROFILE_CASES = [
    ("missing-key", "prefill_raw_data.json", lambda d: d.pop("prefill_ttft"), "prefill_ttft"),
    ("negative-itl", "decode_raw_data.json", lambda d: d["z_itl"].__setitem__(0, -1.0), "z_itl"),
    ("nan-isl", "prefill_raw_data.json", lambda d: d["prefill_isl"].__setitem__(1, math.nan), "prefill_isl"),
    ("negative-max-kv", "meta.json", lambda d: d.__setitem__("max_kv_tokens", -5), "max_kv_tokens"),
]


def assert_one_clear_line(code: int, err: str, file: str, field: str | None) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert file in lines[0], lines[0]
    if field is not None:
        assert field in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("case,edit,file,field", SCENARIO_CASES, ids=[c[0] for c in SCENARIO_CASES])
def test_malformed_scenario(tmp_path: Path, capsys, case, edit, file, field) -> None:
    path, data = write_inputs(tmp_path)
    data = copy.deepcopy(data)
    edit(data)
    path.write_text(yaml.safe_dump(data))
    code, _, err = run_cli(["simulate", str(path), "--out", str(tmp_path / "out")], capsys)
    assert_one_clear_line(code, err, file, field)
    assert not (tmp_path / "out" / "summary.json").exists()


def test_unreadable_scenario(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["simulate", str(tmp_path / "absent.yaml"), "--out", str(tmp_path / "out")], capsys)
    assert_one_clear_line(code, err, "absent.yaml", None)
    (tmp_path / "dir.yaml").mkdir()
    code, _, err = run_cli(["simulate", str(tmp_path / "dir.yaml"), "--out", str(tmp_path / "out")], capsys)
    assert_one_clear_line(code, err, "dir.yaml", None)
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = run_cli(["simulate", str(tmp_path / "binary.yaml"), "--out", str(tmp_path / "out")], capsys)
    assert_one_clear_line(code, err, "binary.yaml", None)


def test_paths_the_os_cannot_look_up_are_one_clear_line(tmp_path: Path, capsys) -> None:
    """A name longer than the file system allows makes ``Path.exists`` raise instead of answer:
    as a command's argument, as a path inside a scenario and as the output folder."""
    long_name = "x" * 5000
    code, _, err = run_cli(["simulate", str(tmp_path / long_name), "--out", str(tmp_path / "out")], capsys)
    assert_one_clear_line(code, err, long_name, None)
    code, _, err = run_cli(
        ["recommend", "--profiles", long_name, "--isl", "100", "--osl", "100", "--ttft", "500", "--itl", "50"], capsys
    )
    assert_one_clear_line(code, err, long_name, None)
    path, data = write_inputs(tmp_path)
    broken = copy.deepcopy(data)
    broken["deployments"][0]["pools"]["agg"]["profile"] = long_name
    path.write_text(yaml.safe_dump(broken))
    code, _, err = run_cli(["simulate", str(path), "--out", str(tmp_path / "out")], capsys)
    assert_one_clear_line(code, err, "scenario.yaml", "profile")
    assert "File name too long" in err
    path.write_text(yaml.safe_dump(data))
    code, _, err = run_cli(["simulate", str(path), "--out", str(tmp_path / long_name)], capsys)
    assert_one_clear_line(code, err, long_name, None)


@pytest.mark.parametrize("case,text,field", TRACE_CASES, ids=[c[0] for c in TRACE_CASES])
def test_malformed_trace(tmp_path: Path, capsys, case, text, field) -> None:
    path, data = write_inputs(tmp_path)
    path.write_text(yaml.safe_dump(data))
    (tmp_path / "trace.csv").write_text(text)
    code, _, err = run_cli(["simulate", str(path), "--out", str(tmp_path / "out")], capsys)
    assert_one_clear_line(code, err, "trace.csv", field)


def test_unreadable_trace(tmp_path: Path, capsys) -> None:
    path, data = write_inputs(tmp_path)
    path.write_text(yaml.safe_dump(data))
    (tmp_path / "trace.csv").write_bytes(b"arrival_s,input_tokens,output_tokens\n\xff\xfe,1,1\n")
    code, _, err = run_cli(["simulate", str(path), "--out", str(tmp_path / "out")], capsys)
    assert_one_clear_line(code, err, "trace.csv", None)


def test_malformed_mooncake_trace(tmp_path: Path, capsys) -> None:
    path, data = write_inputs(tmp_path)
    (tmp_path / "trace.jsonl").write_text('{"timestamp": 0, "input_length": 10}\n')
    data["deployments"][0]["trace"] = {"path": "trace.jsonl"}
    path.write_text(yaml.safe_dump(data))
    code, _, err = run_cli(["simulate", str(path), "--out", str(tmp_path / "out")], capsys)
    assert_one_clear_line(code, err, "trace.jsonl", "output_length")


@pytest.mark.parametrize("case,name,edit,field", PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES])
def test_malformed_profile(tmp_path: Path, capsys, case, name, edit, field) -> None:
    path, data = write_inputs(tmp_path)
    path.write_text(yaml.safe_dump(data))
    _edit_json(tmp_path / "profile" / name, edit)
    code, _, err = run_cli(["simulate", str(path), "--out", str(tmp_path / "out")], capsys)
    assert_one_clear_line(code, err, name, field)


def test_unreadable_profile(tmp_path: Path, capsys) -> None:
    path, data = write_inputs(tmp_path)
    path.write_text(yaml.safe_dump(data))
    (tmp_path / "profile" / "decode_raw_data.json").write_text("{not json")
    code, _, err = run_cli(["simulate", str(path), "--out", str(tmp_path / "out")], capsys)
    assert_one_clear_line(code, err, "decode_raw_data.json", None)


def test_bad_duration_override(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(
        ["simulate", str(AZURE_DISAGG), "--out", str(tmp_path / "out"), "--duration", "soon"], capsys
    )
    assert_one_clear_line(code, err, "", "--duration")


# ---------------------------------------------------------------------------------------------
# bench and trace synth
# ---------------------------------------------------------------------------------------------
def test_bench_json_matches_the_measured_tpot(capsys) -> None:
    code, out, _ = run_cli(
        [
            "bench",
            "--profile",
            str(TRTLLM_H100),
            "--mode",
            "agg",
            "--concurrency",
            "32",
            "--isl",
            "2048",
            "--osl",
            "256",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    result = json.loads(out)
    assert set(result) == {"ttft_ms", "tpot_ms"}
    measured_tpot = 14.943436353125  # examples/measured: h100 trtllm tp1, c=32, isl=2048, osl=256
    assert result["tpot_ms"] == pytest.approx(measured_tpot, rel=0.25)
    assert result["ttft_ms"] > 0


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--concurrency", "0"], "--concurrency"),
        (["--max-batch-tokens", "0"], "--max-batch-tokens"),  # was a multi-line pydantic dump
        (["--concurrency", "100000000"], "--concurrency"),  # ran for hours
        (["--isl", "1000000000"], "--isl/--osl"),  # past the profile's context: nothing would be served
    ],
)
def test_bench_rejects_bad_arguments(capsys, flags: list[str], named: str) -> None:
    base = {"--concurrency": "4", "--isl": "10", "--osl": "10"}
    for flag, value in zip(flags[::2], flags[1::2]):
        base[flag] = value
    argv = ["bench", "--profile", str(TRTLLM_H100)] + [item for pair in base.items() for item in pair]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and named in err


def test_trace_synth_writes_a_readable_mooncake_file(tmp_path: Path, capsys) -> None:
    def synth(out: Path) -> list[str]:
        rate, lengths = TRACES / "servegen_m-large_rate_10min.csv", TRACES / "azure2023_conv.csv"
        fixed = ["--peak-rps", "3", "--start", "6h", "--duration", "10m", "--seed", "4"]
        return ["trace", "synth", "--rate", str(rate), "--lengths", str(lengths), *fixed, "--out", str(out)]

    out = tmp_path / "synth.jsonl"
    code, stdout, _ = run_cli(synth(out), capsys)
    assert code == 0 and str(out) in stdout
    trace = read_trace(out, "mooncake")
    # 3 req/s at the peak over 10 minutes; the default client-superposition arrivals are bursty
    # at minute scale, so a 10-minute count varies by about 10% around its mean.
    assert 600 < len(trace) < 1.5 * 3 * 600
    assert trace.arrival_s.min() >= 0 and trace.arrival_s.max() < 600
    assert (trace.input_tokens >= 1).all() and (trace.output_tokens >= 1).all()
    first = json.loads(out.read_text().splitlines()[0])
    assert {"timestamp", "input_length", "output_length"} <= set(first)
    # Seeded: the same command writes the same file.
    again = tmp_path / "again.jsonl"
    assert main(synth(again)) == 0
    assert again.read_bytes() == out.read_bytes()
    capsys.readouterr()
