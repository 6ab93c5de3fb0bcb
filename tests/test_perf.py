"""Engine profiles and the performance model: loading, validation, interpolation rules, warnings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fleet_planner.errors import InputError
from fleet_planner.perf import EngineProfile, PerfModel, load_profile

PROFILES_DIR = Path(__file__).resolve().parent.parent / "examples" / "profiles"
PROFILE_DIRS = sorted(p for p in PROFILES_DIR.iterdir() if p.is_dir())
NAMES = [p.name for p in PROFILE_DIRS]
H100 = PROFILES_DIR / "llama3.1-8b_h100_vllm_tp1"


@pytest.fixture(params=PROFILE_DIRS, ids=NAMES)
def profile(request: pytest.FixtureRequest) -> EngineProfile:
    return load_profile(request.param)


@pytest.fixture
def h100_copy(tmp_path: Path) -> Path:
    """A writable copy of one profile to corrupt."""
    return Path(shutil.copytree(H100, tmp_path / H100.name))


def _edit(file: Path, key: str, value: object) -> None:
    data = json.loads(file.read_text())
    if value is _DELETE:
        del data[key]
    else:
        data[key] = value
    file.write_text(json.dumps(data))


_DELETE = object()


# ----------------------------------------------------------------------------- loading


def test_all_vendored_profiles_present() -> None:
    assert len(PROFILE_DIRS) == 5
    assert (PROFILES_DIR / "PROVENANCE.md").is_file()


def test_load_profile_fields(profile: EngineProfile) -> None:
    meta = json.loads((Path(profile.path) / "meta.json").read_text())
    assert profile.name == Path(profile.path).name
    assert profile.model == meta["model"]
    assert profile.system == meta["system"]
    assert profile.backend == meta["backend"]
    assert profile.tp == meta["tp"]
    assert profile.gpus_per_engine == meta["gpus_per_engine"]
    assert profile.max_kv_tokens == meta["max_kv_tokens"]
    assert profile.max_context == meta["max_context"]
    assert np.all(np.diff(profile.prefill_isl) > 0)
    n = len(profile.decode_context)
    assert len(profile.decode_kv_usage) == len(profile.decode_itl_ms) == len(profile.decode_thpt_per_gpu) == n
    # Batch sizes derived from KV usage are whole sequences in this data set.
    assert np.allclose(profile.decode_batch, np.round(profile.decode_batch), atol=1e-6)


def test_gpus_per_engine_parameter_overrides_meta() -> None:
    assert load_profile(H100, gpus_per_engine=2).gpus_per_engine == 2


def _write_npz(src: Path, dst: Path) -> None:
    prefill = json.loads((src / "prefill_raw_data.json").read_text())
    decode = json.loads((src / "decode_raw_data.json").read_text())
    (dst / "selected_prefill_interpolation").mkdir(parents=True)
    (dst / "selected_decode_interpolation").mkdir(parents=True)
    np.savez(dst / "selected_prefill_interpolation" / "raw_data.npz", **{k: np.array(v) for k, v in prefill.items()})
    np.savez(dst / "selected_decode_interpolation" / "raw_data.npz", **{k: np.array(v) for k, v in decode.items()})


@pytest.mark.parametrize("src", PROFILE_DIRS, ids=NAMES)
def test_npz_layout_loads_identically(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / src.name
    _write_npz(src, dst)
    shutil.copy(src / "meta.json", dst / "meta.json")
    a, b = load_profile(src), load_profile(dst)
    for field in ("name", "model", "system", "backend", "tp", "gpus_per_engine", "max_kv_tokens", "max_context"):
        assert getattr(a, field) == getattr(b, field)
    for field in (
        "prefill_isl",
        "prefill_ttft_ms",
        "prefill_thpt_per_gpu",
        "decode_kv_usage",
        "decode_context",
        "decode_itl_ms",
        "decode_thpt_per_gpu",
    ):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    ma, mb = PerfModel(a), PerfModel(b)
    isl = np.linspace(1, 30000, 50)
    np.testing.assert_array_equal(ma.ttft_ms(isl), mb.ttft_ms(isl))
    np.testing.assert_array_equal(ma.itl_ms(isl / 100, isl), mb.itl_ms(isl / 100, isl))


def test_npz_without_meta_defaults(tmp_path: Path) -> None:
    src = PROFILES_DIR / "llama3.1-70b_h200_vllm_tp4"
    _write_npz(src, tmp_path / "p")
    bare = load_profile(tmp_path / "p")
    assert bare.gpus_per_engine == 1 and bare.tp == 1 and bare.max_context is None
    assert bare.model == "unknown"
    assert load_profile(tmp_path / "p", gpus_per_engine=4).gpus_per_engine == 4


# ----------------------------------------------------------------------------- interpolation


def test_ttft_monotone_over_fine_grid(profile: EngineProfile) -> None:
    model = PerfModel(profile)
    isl = np.linspace(0, 2 * profile.prefill_isl[-1], 20001)
    ttft = model.ttft_ms(isl)
    assert np.all(np.diff(ttft) >= 0)
    assert ttft[0] == pytest.approx(model.prefill_overhead_ms)
    assert 0 <= model.prefill_overhead_ms <= profile.prefill_ttft_ms[0]


def test_itl_monotone_in_batch_and_context(profile: EngineProfile) -> None:
    model = PerfModel(profile)
    batch = np.geomspace(0.25, 2000, 300)
    context = np.geomspace(50, 100000, 300)
    grid = model.itl_ms(batch[:, None], context[None, :])
    assert grid.shape == (300, 300)
    assert np.all(np.diff(grid, axis=0) >= -1e-12)
    assert np.all(np.diff(grid, axis=1) >= -1e-12)
    assert np.all(grid > 0)


def test_ttft_reproduces_measured_points(profile: EngineProfile) -> None:
    model = PerfModel(profile)
    raw = profile.prefill_ttft_ms
    unchanged = raw >= np.maximum.accumulate(raw)
    assert unchanged.sum() >= len(raw) - 1
    for isl, ttft in zip(profile.prefill_isl[unchanged], raw[unchanged]):
        assert model.ttft_ms(float(isl)) == pytest.approx(ttft, rel=1e-12)
    assert model.warnings == []


def _itl_after_fixups(profile: EngineProfile, k: int) -> float:
    """What the monotone fix-ups make of point k: the highest running-max row curve, at its
    batch, over every context up to its own (flat outside each row's measured batches)."""
    batch, ctx, itl = np.round(profile.decode_batch, 6), profile.decode_context, profile.decode_itl_ms
    value = -np.inf
    for c in np.unique(ctx[ctx <= ctx[k]]):
        row = ctx == c
        order = np.argsort(batch[row])
        curve = np.maximum.accumulate(itl[row][order])
        value = max(value, float(np.interp(batch[k], batch[row][order], curve)))
    return value


def test_itl_reproduces_measured_points(profile: EngineProfile) -> None:
    model = PerfModel(profile)
    got = model.itl_ms(profile.decode_batch, profile.decode_context)
    assert np.all(got >= profile.decode_itl_ms - 1e-9)  # fix-ups only ever raise
    unchanged = [k for k in range(len(got)) if _itl_after_fixups(profile, k) <= profile.decode_itl_ms[k]]
    assert len(unchanged) >= 0.8 * len(got)
    for k in unchanged:
        assert got[k] == pytest.approx(profile.decode_itl_ms[k], rel=1e-9)
    assert model.warnings == []


def test_itl_between_rows_is_linear_in_log_context() -> None:
    model = PerfModel(load_profile(H100))
    lo, hi = model.itl_ms(1.0, 2298.0), model.itl_ms(1.0, 4346.0)
    mid = float(np.sqrt(2298.0 * 4346.0))
    assert model.itl_ms(1.0, mid) == pytest.approx((lo + hi) / 2, rel=1e-12)


def test_prefill_chunks_add_up(profile: EngineProfile) -> None:
    model = PerfModel(profile)
    for whole in (100.0, 1000.0, 7777.0, 40000.0):
        for split in (1.0, 0.3 * whole, 0.5 * whole, whole - 1):
            a = model.prefill_chunk_ms(0.0, split)
            b = model.prefill_chunk_ms(split, whole - split)
            assert a + b == pytest.approx(model.prefill_chunk_ms(0.0, whole), rel=1e-12)
        assert model.prefill_chunk_ms(0.0, whole) == pytest.approx(
            model.ttft_ms(whole) - model.prefill_overhead_ms, rel=1e-12
        )
    starts = np.arange(0, 32768, 512, dtype=float)
    chunks = model.prefill_chunk_ms(starts, 512.0)
    assert np.all(chunks >= 0)
    assert chunks.sum() == pytest.approx(model.ttft_ms(32768.0) - model.prefill_overhead_ms, rel=1e-9)


def test_decode_throughput_and_max_batch(profile: EngineProfile) -> None:
    model = PerfModel(profile)
    assert model.decode_tokens_per_s(16, 2000) == pytest.approx(16 * 1000 / model.itl_ms(16, 2000))
    assert model.max_batch(1000) == pytest.approx(profile.max_kv_tokens / 1000)
    np.testing.assert_allclose(
        model.max_batch(np.array([1000.0, 0.0])), [profile.max_kv_tokens / 1000, profile.max_kv_tokens]
    )
    assert model.max_kv_tokens == profile.max_kv_tokens
    assert model.gpus_per_engine == profile.gpus_per_engine
    assert model.max_context == profile.max_context
    assert profile.name in repr(model)


# ----------------------------------------------------------------------------- out of range


def test_in_range_queries_do_not_warn() -> None:
    model = PerfModel(load_profile(H100))
    model.ttft_ms(5000)
    model.itl_ms(0.5, 506)  # below the smallest batch: the batch-1 value, no warning
    model.itl_ms(90, 3000)
    model.itl_ms(np.array([1.0, 10.0]), np.array([600.0, 20000.0]))
    assert model.warnings == []


def test_ttft_extrapolation_warns_once() -> None:
    profile = load_profile(H100)
    model = PerfModel(profile)
    prev, last = profile.prefill_isl[-2:]
    slope = (profile.prefill_ttft_ms[-1] - profile.prefill_ttft_ms[-2]) / (last - prev)
    assert model.ttft_ms(last + 1000) == pytest.approx(profile.prefill_ttft_ms[-1] + 1000 * slope)
    model.ttft_ms(np.array([last + 5000.0]))
    model.prefill_chunk_ms(last, 10.0)
    assert len(model.warnings) == 1
    assert "extrapolated" in model.warnings[0] and profile.name in model.warnings[0]


def test_itl_clamps_and_warns_once_per_kind() -> None:
    model = PerfModel(load_profile(H100))
    assert model.itl_ms(4, 100) == model.itl_ms(4, 506)
    assert model.itl_ms(4, 90000) == model.itl_ms(4, 30250)
    assert model.itl_ms(5000, 506) == model.itl_ms(579, 506)
    assert len(model.warnings) == 3
    for _ in range(3):
        model.itl_ms(4, 10)
        model.itl_ms(np.array([4.0]), np.array([1e6]))
        model.itl_ms(np.array([1e4]), 506.0)
    assert len(model.warnings) == 3
    text = " ".join(model.warnings)
    assert "below" in text and "above" in text and "batch" in text


def test_vector_warns_like_scalar() -> None:
    scalar, vector = PerfModel(load_profile(H100)), PerfModel(load_profile(H100))
    for b, c in ((3.0, 20.0), (3.0, 5e4), (400.0, 8000.0), (2.0, 900.0)):
        scalar.itl_ms(b, c)
        vector.itl_ms(np.array([b]), np.array([c]))
    assert scalar.warnings == vector.warnings and len(scalar.warnings) == 3


def test_scalar_and_vector_paths_agree(profile: EngineProfile) -> None:
    model = PerfModel(profile)
    rng = np.random.default_rng(7)
    isl = np.concatenate(([0.0, 1.0], profile.prefill_isl, rng.uniform(0, 60000, 500)))
    vec = model.ttft_ms(isl)
    assert isinstance(vec, np.ndarray)
    for x, v in zip(isl, vec):
        s = model.ttft_ms(float(x))
        assert isinstance(s, float) and s == pytest.approx(v, rel=1e-12, abs=1e-12)
    batch = np.concatenate((profile.decode_batch, rng.uniform(0.1, 1500, 500)))
    context = np.concatenate((profile.decode_context, np.exp(rng.uniform(np.log(50), np.log(80000), 500))))
    vec = model.itl_ms(batch, context)
    tps = model.decode_tokens_per_s(batch, context)
    done, chunk = rng.uniform(0, 30000, len(batch)), rng.uniform(1, 4096, len(batch))
    chunks = model.prefill_chunk_ms(done, chunk)
    for k in range(len(batch)):
        assert model.itl_ms(batch[k], context[k]) == pytest.approx(vec[k], rel=1e-12)
        assert model.decode_tokens_per_s(float(batch[k]), float(context[k])) == pytest.approx(tps[k], rel=1e-12)
        assert model.prefill_chunk_ms(float(done[k]), float(chunk[k])) == pytest.approx(chunks[k], rel=1e-9, abs=1e-9)
    assert isinstance(model.itl_ms(np.int64(4), 1000), float)
    assert model.itl_ms([4, 8], 1000).shape == (2,)


# ----------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("file", "key", "value", "message"),
    [
        ("prefill_raw_data.json", "prefill_ttft", _DELETE, "missing"),
        ("decode_raw_data.json", "z_itl", _DELETE, "missing"),
        ("decode_raw_data.json", "max_kv_tokens", _DELETE, "missing"),
        ("prefill_raw_data.json", "prefill_ttft", [1.0, float("nan")] + [5.0] * 10, "NaN"),
        ("decode_raw_data.json", "z_itl", "inf", "NaN or infinite"),
        ("prefill_raw_data.json", "prefill_isl", [-128] + list(range(256, 256 * 12, 256)), "> 0"),
        ("decode_raw_data.json", "y_context_length", [0] * 51, "> 0"),
        ("prefill_raw_data.json", "prefill_thpt_per_gpu", [1.0, 2.0], "length"),
        ("decode_raw_data.json", "z_thpt_per_gpu", [1.0] * 50, "length"),
        ("prefill_raw_data.json", "prefill_isl", [128], "at least 2"),
        ("decode_raw_data.json", "max_kv_tokens", [0], "positive integer"),
        ("decode_raw_data.json", "max_kv_tokens", -5, "positive integer"),
        ("decode_raw_data.json", "max_kv_tokens", [1, 2], "one value"),
        ("prefill_raw_data.json", "prefill_isl", "abc", "list of numbers"),
        ("meta.json", "max_kv_tokens", 12345, "disagrees"),
        ("meta.json", "gpus_per_engine", 0, "positive integer"),
        ("meta.json", "tp", 1.5, "positive integer"),
        ("meta.json", "model", 7, "string"),
        # Huge values are slips, refused before they overflow the capacity model to inf.
        ("decode_raw_data.json", "max_kv_tokens", 1e30, "<= 1e+09"),
        ("decode_raw_data.json", "z_itl", [1e308] * 51, "<= 1e+09"),
        ("meta.json", "tp", 10**6, "<= 1024"),
        ("meta.json", "max_context", 10**12, "<= 1e+09"),
    ],
)
def test_malformed_profile_names_file_and_key(
    h100_copy: Path, file: str, key: str, value: object, message: str
) -> None:
    target = h100_copy / file
    if value == "inf":
        data = json.loads(target.read_text())
        data[key] = [float("inf")] * len(data[key])
        target.write_text(json.dumps(data))  # json writes the non-standard token Infinity
    else:
        _edit(target, key, value)
    with pytest.raises(InputError) as err:
        load_profile(h100_copy)
    assert err.value.file == str(target)
    assert err.value.field == key
    assert message in err.value.problem
    assert file in str(err.value) and key in str(err.value)


def test_bad_json_names_file(h100_copy: Path) -> None:
    target = h100_copy / "decode_raw_data.json"
    target.write_text('{"x_kv_usage": [0.1, ')
    with pytest.raises(InputError, match="invalid JSON") as err:
        load_profile(h100_copy)
    assert err.value.file == str(target)


def test_non_object_json_names_file(h100_copy: Path) -> None:
    (h100_copy / "meta.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="JSON object") as err:
        load_profile(h100_copy)
    assert err.value.file == str(h100_copy / "meta.json")


@pytest.mark.parametrize("missing", ["prefill_raw_data.json", "decode_raw_data.json"])
def test_missing_file_names_file(h100_copy: Path, missing: str) -> None:
    (h100_copy / missing).unlink()
    with pytest.raises(InputError, match="cannot read: No such file") as err:
        load_profile(h100_copy)
    assert err.value.file == str(h100_copy / missing)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_profile(tmp_path / "nope")


def test_npz_missing_key_and_bad_archive(tmp_path: Path) -> None:
    dst = tmp_path / "p"
    _write_npz(H100, dst)
    decode = dst / "selected_decode_interpolation" / "raw_data.npz"
    with np.load(decode) as archive:
        arrays = {k: archive[k] for k in archive.files if k != "z_itl"}
    np.savez(decode, **arrays)
    with pytest.raises(InputError) as err:
        load_profile(dst)
    assert err.value.file == str(decode) and err.value.field == "z_itl"
    decode.write_bytes(b"not an npz")
    with pytest.raises(InputError, match="NPZ") as err:
        load_profile(dst)
    assert err.value.file == str(decode)
    decode.unlink()
    with pytest.raises(InputError, match="not found") as err:
        load_profile(dst)
    assert err.value.file == str(decode)


def test_a_file_given_for_the_folder_says_so(h100_copy: Path) -> None:
    with pytest.raises(InputError, match="is a file; a profile is the folder"):
        load_profile(h100_copy / "prefill_raw_data.json")
