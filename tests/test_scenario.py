"""Scenario files: the documented example loads, and every kind of mistake is one InputError that
names the file and the field."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from fleet_planner.errors import InputError
from fleet_planner.planning import SLA, DeploymentSpec
from fleet_sim.scenario import (
    KNOWN_POLICIES,
    Scenario,
    TraceSource,
    load_scenario,
    parse_scenario,
    scenario_json_schema,
)

EXAMPLE = """\
name: mixed-fleet
duration: 1h
seed: 7
gpus: {h200: 16, h100: 8}
planner: {policy: static, interval_s: 30}
endpoints:
  llama-8b:
    sla: {ttft_ms: 500, itl_ms: 50}
    trace:
      path: traces/azure2023_conv.csv
      format: azure
      rate_scale: 2.0
      time_scale: 1.0
      offset_s: 0
      max_input_tokens: 16000
deployments:
  - name: chat-h200
    tenant: acme
    endpoint: llama-8b
    mode: disagg
    pools:
      prefill: {profile: profiles/llama3.1-8b_h200_vllm_tp1, gpu_type: h200, gpus_per_replica: 1, min: 1, max: 8, initial: 2, startup_s: 60}
      decode:  {profile: profiles/llama3.1-8b_h200_vllm_tp1, gpu_type: h200, gpus_per_replica: 1, min: 1, max: 8, initial: 2, startup_s: 60}
  - name: chat-h100
    tenant: acme
    endpoint: llama-8b
    mode: agg
    pools:
      agg: {profile: profiles/llama3.1-8b_h100_vllm_tp1, gpu_type: h100, gpus_per_replica: 1, min: 0, max: 4, initial: 1, startup_s: 90}
  - name: nightly
    tenant: beta
    endpoint: llama-8b-batch
    mode: agg
    sla: {ttft_ms: 2000, itl_ms: 100}
    pools:
      agg: {profile: profiles/llama3.1-8b_h100_vllm_tp1, gpu_type: h100, gpus_per_replica: 1, min: 0, max: 8, initial: 1, startup_s: 90}
    trace:
      synth: {rate: traces/servegen_m-large_rate_10min.csv, peak_rps: 12, start_s: 0, lengths: traces/azure2023_conv.csv}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A scenario folder holding every file the example refers to."""
    for profile in ("llama3.1-8b_h200_vllm_tp1", "llama3.1-8b_h100_vllm_tp1"):
        (tmp_path / "profiles" / profile).mkdir(parents=True)
    (tmp_path / "traces").mkdir()
    for trace in ("azure2023_conv.csv", "servegen_m-large_rate_10min.csv", "mooncake.jsonl"):
        (tmp_path / "traces" / trace).write_text("x\n")
    return tmp_path


def example() -> dict:
    return yaml.safe_load(EXAMPLE)


def write(folder: Path, data: dict | str) -> Path:
    path = folder / "scenario.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def load_error(folder: Path, data: dict | str, **kwargs) -> InputError:
    path = write(folder, data)
    with pytest.raises(InputError) as caught:
        load_scenario(path, **kwargs)
    assert "scenario.yaml" in str(caught.value)
    return caught.value


def test_example_loads(folder: Path) -> None:
    scenario = load_scenario(write(folder, EXAMPLE))
    assert scenario.name == "mixed-fleet"
    assert scenario.duration_s == 3600.0
    assert scenario.seed == 7
    assert scenario.gpus == {"h200": 16, "h100": 8}
    assert scenario.base_dir == folder.resolve()
    assert scenario.planner.policy == "static"
    assert scenario.planner.interval_s == 30.0
    assert scenario.planner.observation_delay_s == 15.0
    assert scenario.planner.options == {}

    prefill = scenario.deployments[0].pools["prefill"]
    assert prefill.profile == (folder / "profiles" / "llama3.1-8b_h200_vllm_tp1").resolve()
    assert (prefill.initial, prefill.startup_s, prefill.max_batch_tokens, prefill.max_num_seqs) == (2, 60.0, 8192, 256)
    assert (prefill.kv_bytes_per_token, prefill.kv_transfer_gbps) == (131072, 50.0)

    shared = scenario.endpoints["llama-8b"].trace
    assert shared.path == (folder / "traces" / "azure2023_conv.csv").resolve()
    assert (shared.format, shared.rate_scale, shared.max_input_tokens) == ("azure", 2.0, 16000)
    synth = scenario.deployments[2].trace.synth
    assert synth is not None
    assert synth.rate == (folder / "traces" / "servegen_m-large_rate_10min.csv").resolve()
    assert (synth.peak_rps, synth.lengths_format, synth.arrival) == (12.0, "azure", "auto")


def test_endpoint_resolution(folder: Path) -> None:
    scenario = load_scenario(write(folder, EXAMPLE))
    endpoints = scenario.endpoint_configs()
    assert list(endpoints) == ["llama-8b", "llama-8b-batch"]
    (shared_sla, shared_trace), (batch_sla, batch_trace) = endpoints.values()
    assert isinstance(shared_sla, SLA) and isinstance(shared_trace, TraceSource)
    assert (shared_sla.ttft_ms, shared_trace.format) == (500, "azure")
    assert batch_sla.ttft_ms == 2000
    assert batch_trace.synth is not None
    assert scenario.endpoint_of("chat-h100") == endpoints["llama-8b"]
    assert scenario.deployments_of("llama-8b") == ["chat-h200", "chat-h100"]
    assert scenario.deployments_of("llama-8b-batch") == ["nightly"]
    with pytest.raises(KeyError):
        scenario.endpoint_of("nope")


def test_deployment_specs(folder: Path) -> None:
    specs = load_scenario(write(folder, EXAMPLE)).deployment_specs()
    assert [spec.name for spec in specs] == ["chat-h200", "chat-h100", "nightly"]
    assert all(isinstance(spec, DeploymentSpec) for spec in specs)
    disagg = specs[0]
    assert list(disagg.pools) == ["prefill", "decode"]
    assert disagg.sla.itl_ms == 50
    decode = disagg.pools["decode"]
    assert decode.profile_path == str((folder / "profiles" / "llama3.1-8b_h200_vllm_tp1").resolve())
    assert (decode.min_replicas, decode.max_replicas, decode.initial_replicas, decode.startup_s) == (1, 8, 2, 60.0)
    assert specs[2].sla.ttft_ms == 2000
    assert specs[2].pools["agg"].gpu_type == "h100"


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [("1h", 3600.0), ("90m", 5400.0), ("3600s", 3600.0), ("2d", 172800.0), (120, 120.0), (1.5, 1.5)],
)
def test_duration_forms(folder: Path, duration: object, seconds: float) -> None:
    data = example()
    data["duration"] = duration
    assert load_scenario(write(folder, data)).duration_s == seconds


def test_defaults(folder: Path) -> None:
    data = example()
    del data["seed"]
    pool = data["deployments"][1]["pools"]["agg"]
    for key in ("gpus_per_replica", "initial", "startup_s"):
        del pool[key]
    pool["min"] = 1
    data["deployments"][2]["trace"]["synth"].update(lengths="traces/mooncake.jsonl")
    scenario = load_scenario(write(folder, data))
    assert scenario.seed == 0
    agg = scenario.deployments[1].pools["agg"]
    assert (agg.gpus_per_replica, agg.initial, agg.startup_s) == (1, 1, 60.0)
    assert scenario.deployments[2].trace.synth.lengths_format == "mooncake"


def test_jsonl_trace_defaults_to_mooncake(folder: Path) -> None:
    data = example()
    data["endpoints"]["llama-8b"]["trace"] = {"path": "traces/mooncake.jsonl"}
    trace = load_scenario(write(folder, data)).endpoints["llama-8b"].trace
    assert trace.format == "mooncake"
    assert (trace.rate_scale, trace.time_scale, trace.offset_s, trace.max_input_tokens) == (1.0, 1.0, 0.0, None)


def test_overrides_apply_before_validation(folder: Path) -> None:
    path = write(folder, EXAMPLE)
    scenario = load_scenario(path, overrides={"seed": 3, "duration": "90m", "policy": "oracle"})
    assert (scenario.seed, scenario.duration_s, scenario.planner.policy) == (3, 5400.0, "oracle")
    assert scenario.planner.interval_s == 30.0


def test_bad_override_is_reported_as_such(folder: Path) -> None:
    error = load_error(folder, EXAMPLE, overrides={"policy": "magic"})
    assert error.field == "planner.policy"
    assert "override" in str(error) and "magic" in str(error)
    with pytest.raises(InputError, match="unknown override"):
        load_scenario(write(folder, EXAMPLE), overrides={"speed": 2})


def test_planner_options_and_custom_policy_set(folder: Path) -> None:
    data = example()
    data["planner"] = {"policy": "mine", "interval_s": "2m", "predictor": "kalman", "policy_file": "p.yaml"}
    scenario = load_scenario(write(folder, data), policies={"mine"})
    assert scenario.planner.interval_s == 120.0
    assert scenario.planner.options == {"predictor": "kalman", "policy_file": "p.yaml"}
    assert load_error(folder, data).field == "planner.policy"
    assert {"static", "static-peak", "oracle", "local", "global", "fcfs"} <= KNOWN_POLICIES


def _without(path: list, data: dict) -> dict:
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return data


def _with(path: list, value: object, data: dict) -> dict:
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


AGG = ["deployments", 1, "pools", "agg"]
SHARED_TRACE = ["endpoints", "llama-8b", "trace"]
SYNTH = ["deployments", 2, "trace", "synth"]
CONV = "traces/azure2023_conv.csv"


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (lambda d: _without(["name"], d), "name", "required"),
        (lambda d: _without([*AGG, "max"], d), "deployments[1].pools.agg.max", "required"),
        (lambda d: _with([*AGG, "min"], -1, d), "deployments[1].pools.agg.min", "-1"),
        (lambda d: _with([*AGG, "min"], 5, d), "deployments[1].pools.agg.max", ">= min (5)"),
        (lambda d: _with([*AGG, "initial"], 9, d), "deployments[1].pools.agg.initial", "[0, 4]"),
        (lambda d: _with([*AGG, "gpus_per_replica"], 0, d), "deployments[1].pools.agg.gpus_per_replica", "0"),
        (lambda d: _with([*AGG, "startup_s"], "soon", d), "deployments[1].pools.agg.startup_s", "soon"),
        (lambda d: _with(["duration"], "0s", d), "duration", "greater than 0"),
        (lambda d: _with(["seed"], -2, d), "seed", "-2"),
        (lambda d: _with(["gpus", "h100"], -1, d), "gpus.h100", "-1"),
        (lambda d: _with([*AGG, "colour"], "red", d), "deployments[1].pools.agg.colour", "gpu_type"),
        (lambda d: _with(["extra"], 1, d), "extra", "unknown key"),
        (lambda d: _with([*SHARED_TRACE, "speed"], 1, d), "endpoints.llama-8b.trace.speed", "rate_scale"),
        (lambda d: _with([*SHARED_TRACE, "format"], "parquet", d), "endpoints.llama-8b.trace.format", "parquet"),
        (lambda d: _without([*SHARED_TRACE, "format"], d), "endpoints.llama-8b.trace.format", "required"),
        (lambda d: _with([*SHARED_TRACE, "rate_scale"], 0, d), "endpoints.llama-8b.trace.rate_scale", "0"),
        (lambda d: _with([*SHARED_TRACE, "max_input_tokens"], 0, d), "endpoints.llama-8b.trace.max_input_tokens", "0"),
        (
            lambda d: _with([*SHARED_TRACE, "synth"], {"rate": CONV, "lengths": CONV}, d),
            "endpoints.llama-8b.trace",
            "exactly one",
        ),
        (lambda d: _with([*SYNTH, "arrival"], "burst", d), "deployments[2].trace.synth.arrival", "burst"),
        (lambda d: _with([*SYNTH, "peak_rps"], -3, d), "deployments[2].trace.synth.peak_rps", "-3"),
        (lambda d: _with([*SYNTH, "rate_scale"], 2, d), "deployments[2].trace.synth.rate_scale", "unknown key"),
        (lambda d: _with([*SYNTH, "lengths"], "profiles", d), "deployments[2].trace.synth.lengths", "is a folder"),
        (
            lambda d: _with([*AGG, "profile"], CONV, d),  # a file where the profile folder belongs
            "deployments[1].pools.agg.profile",
            "is a file, not a folder",
        ),
        (lambda d: _with([*SYNTH, "format"], "csv", d), "deployments[2].trace.synth.format", "unknown key"),
        (
            lambda d: _with(["deployments", 2, "trace", "format"], "csv", d),
            "deployments[2].trace.format",
            "lengths_format",
        ),
        (
            lambda d: _with(["deployments", 2, "trace", "start_s"], "1h", d),
            "deployments[2].trace.start_s",
            "synth.start_s",
        ),
        (
            lambda d: _with(["deployments", 2, "trace", "select"], {"Model": ["x"]}, d),
            "deployments[2].trace.select",
            "CSV",
        ),
        (
            lambda d: _with([*SHARED_TRACE, "select"], {"Model": "GPT-4"}, d),
            "endpoints.llama-8b.trace.select.Model",
            "list",
        ),
        (lambda d: _with([*SHARED_TRACE, "start_s"], -60, d), "endpoints.llama-8b.trace.start_s", "-60"),
        # a trace shifted past the end sent nothing, without a word
        (lambda d: _with([*SHARED_TRACE, "offset_s"], "2h", d), "endpoints.llama-8b.trace.offset_s", "no request"),
        (lambda d: _with(["deployments", 2, "trace", "offset_s"], 3600, d), "deployments[2].trace.offset_s", "3600"),
        (lambda d: _with([*AGG, "gpu_type"], "a100", d), "deployments[1].pools.agg.gpu_type", "a100"),
        (lambda d: _with(["deployments", 1, "mode"], "disagg", d), "deployments[1].pools", "prefill"),
        (lambda d: _with(["deployments", 1, "mode"], "hybrid", d), "deployments[1].mode", "hybrid"),
        (lambda d: _with(["deployments", 1, "name"], "Chat_H100", d), "deployments[1].name", "Chat_H100"),
        (lambda d: _with(["deployments", 1, "name"], "chat-h200", d), "deployments[1].name", "duplicate"),
        (lambda d: _with(["planner", "policy"], "random", d), "planner.policy", "random"),
        (lambda d: _with(["planner", "interval_s"], 0, d), "planner.interval_s", "greater than 0"),
        (lambda d: _with(["deployments"], [], d), "deployments", "at least 1"),
        (lambda d: _with(["endpoints", "orphan"], d["endpoints"]["llama-8b"], d), "endpoints.orphan", "no deployment"),
    ],
)
def test_invalid_fields(folder: Path, edit, field: str, words: str) -> None:
    error = load_error(folder, edit(example()))
    assert error.field == field
    assert f"scenario.yaml: {field}: " in str(error)
    assert words in str(error)


@pytest.mark.parametrize(
    "yaml_path",
    [
        ["endpoints", "llama-8b", "sla", "ttft_ms"],
        ["deployments", 0, "pools", "decode", "kv_transfer_gbps"],
        ["deployments", 0, "pools", "decode", "startup_s"],
        ["deployments", 2, "trace", "synth", "peak_rps"],
        ["endpoints", "llama-8b", "trace", "time_scale"],
        ["duration"],
    ],
)
def test_nan_is_rejected(folder: Path, yaml_path: list) -> None:
    text = yaml.safe_dump(_with(yaml_path, "NAN_HERE", example()), sort_keys=False).replace("NAN_HERE", ".nan")
    value = yaml.safe_load(text)
    for key in yaml_path:
        value = value[key]
    assert math.isnan(value)  # the file really holds a float NaN
    error = load_error(folder, text)
    assert error.field == _dotted(yaml_path)
    assert "nan" in str(error).lower()


def _dotted(path: list) -> str:
    return "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path).lstrip(".")


@pytest.mark.parametrize(
    ("yaml_path", "value", "field"),
    [
        (["deployments", 0, "pools", "prefill", "profile"], "profiles/missing", "deployments[0].pools.prefill.profile"),
        (["endpoints", "llama-8b", "trace", "path"], "traces/missing.csv", "endpoints.llama-8b.trace.path"),
        (["deployments", 2, "trace", "synth", "rate"], "traces/none.csv", "deployments[2].trace.synth.rate"),
        (["deployments", 2, "trace", "synth", "lengths"], "traces/none.csv", "deployments[2].trace.synth.lengths"),
    ],
)
def test_missing_referenced_file(folder: Path, yaml_path: list, value: str, field: str) -> None:
    error = load_error(folder, _with(yaml_path, value, example()))
    assert error.field == field
    assert "not found" in str(error) and str(folder.resolve() / value) in str(error)


def test_paths_are_relative_to_the_scenario_folder(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(folder, EXAMPLE)
    monkeypatch.chdir(folder / "traces")
    scenario = load_scenario(Path("..") / "scenario.yaml")
    assert scenario.base_dir == folder.resolve()
    assert scenario.endpoints["llama-8b"].trace.path == (folder / "traces" / "azure2023_conv.csv").resolve()


def test_yaml_syntax_error_names_the_line(folder: Path) -> None:
    error = load_error(folder, EXAMPLE.replace("seed: 7", "seed: [7"))
    assert "invalid YAML" in str(error) and "line" in str(error)


def test_yaml_not_a_mapping(folder: Path) -> None:
    assert "mapping" in str(load_error(folder, "- just\n- a list\n"))


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nowhere.yaml: cannot read"):
        load_scenario(tmp_path / "nowhere.yaml")


def test_ambiguous_sla(folder: Path) -> None:
    data = example()
    data["deployments"][0]["sla"] = {"ttft_ms": 100, "itl_ms": 10}
    error = load_error(folder, data)
    assert error.field == "deployments[0].sla"
    assert "ambiguous" in str(error)


def test_ambiguous_trace(folder: Path) -> None:
    data = example()
    data["deployments"][1]["trace"] = {"path": "traces/mooncake.jsonl"}
    assert load_error(folder, data).field == "deployments[1].trace"


def test_lone_deployment_without_trace(folder: Path) -> None:
    error = load_error(folder, _without(["deployments", 2, "trace"], example()))
    assert error.field == "deployments[2].trace"
    assert "no trace" in str(error)


def test_endpoint_entry_without_trace(folder: Path) -> None:
    error = load_error(folder, _without(["endpoints", "llama-8b", "trace"], example()))
    assert error.field == "endpoints.llama-8b.trace"
    assert "required" in str(error)


def test_shared_endpoint_needs_an_entry(folder: Path) -> None:
    data = example()
    data["endpoints"] = {}
    error = load_error(folder, data)
    assert error.field == "deployments[0].endpoint"
    assert "chat-h200, chat-h100" in str(error)


def test_initial_replicas_over_inventory(folder: Path) -> None:
    data = example()
    data["deployments"][0]["pools"]["prefill"].update(initial=4, gpus_per_replica=4)  # 16 + 2 > 16 h200
    error = load_error(folder, data)
    assert error.field == "gpus.h200"
    assert "18" in str(error) and "chat-h200/prefill: 16" in str(error)


def test_first_problem_reported_with_count(folder: Path) -> None:
    data = example()
    data["seed"] = -1
    data["gpus"]["h100"] = -1
    assert "1 more problem" in str(load_error(folder, data))


def test_parse_scenario_from_data(folder: Path) -> None:
    scenario = parse_scenario(example(), base_dir=folder)
    assert isinstance(scenario, Scenario)
    assert scenario.deployments[0].pools["decode"].profile.parent == (folder / "profiles").resolve()
    with pytest.raises(InputError, match=r"^seed: "):
        parse_scenario({**example(), "seed": -1}, base_dir=folder)


def test_json_schema() -> None:
    schema = scenario_json_schema()
    json.dumps(schema)
    assert {"name", "duration", "gpus", "planner", "deployments"} <= set(schema["required"])
    assert "base_dir" not in schema["properties"]
