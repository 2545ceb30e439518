"""scripts/bench.py runs end to end on a tiny config and writes its table (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import REPO_ROOT


def test_bench_script_writes_results(tmp_path):
    spec = importlib.util.spec_from_file_location("bench", REPO_ROOT / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # The compiled levers are left out here (inductor takes minutes on CPU); tests/test_compiled_step.py
    # covers the one-graph compile.
    bench.main(["--tiny", "--repeats", "1", "--warmup", "0", "--samples", "4", "--steps", "5", "--out", str(tmp_path),
                "--levers", "eager", "fused_adamw"])
    results = json.loads((tmp_path / "results.json").read_text())
    entry = results["presets"]["mnist_one_step"]
    training = entry["training"][0]
    assert training["images_per_s"] > 0 and training["flops_per_step"] > 0 and training["aten_ops"] > 100
    assert 0 < training["fraction_of_peak"] < 1
    levers = entry["levers"]["levers"]
    assert set(levers) == {"eager", "fused_adamw"} and levers["eager"]["speedup_vs_eager"] == 1
    # One fused kernel per parameter replaces AdamW's per-parameter loop: fewer ops (a count, not a timing).
    assert levers["fused_adamw"]["ops"] < levers["eager"]["ops"]
    sampling = entry["sampling"]
    # One step through B reproduces the 5-step samplers (float32 roundoff only).
    assert sampling["agreement_euler_rel_error"] < 1e-4 and sampling["agreement_rk4_rel_error"] < 1e-4
    assert sampling["dense_vs_factored_B_rel_error"] < 1e-4
    assert sampling["latent_rk4_5_step_s"] > 0 and sampling["latent_one_step_rk4_s"] > 0
    table = (tmp_path / "results.md").read_text()
    assert "| mnist_one_step |" in table and "images/s" in table and "latent speed-up" in table
    assert "GFLOP/step" in table and "| fused_adamw |" in table
