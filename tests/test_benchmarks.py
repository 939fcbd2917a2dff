"""The benchmarks' bookkeeping (never their timings): counts, saved-activation bytes, the GPU suite's
parts and its dry run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # as when a script runs: its helpers (top_kernels.py) sit beside it


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = load_script("adapters")

SHAPE = dict(
    batch=2,
    tokens=8,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    vocab_size=64,
)


def test_projection_rows_count_parameters_and_saved_activations():
    rows = {r.variant: r for r in bench.bench_projection(SHAPE, torch.device("cpu"), rounds=1, steps=1, warmup=0)}
    assert list(rows) == list(bench.VARIANTS)
    d, o, n, r, h = 16, 24, 16, 4, 64
    generalist = n * r * (d + o) + d * n
    assert rows["floor (frozen base)"].trainable == 0
    assert rows["LoRA r=64"].trainable == 64 * (d + o)
    assert rows["LoRAMoE 16x4"].trainable == generalist
    assert rows["AMoE-LoRA 16x4 + hypernetwork"].trainable == generalist + r * (d + o) + d * h + h + h * r * r + r * r
    # A frozen projection needs only its weight (a parameter, not counted) for the input's
    # gradient, so the floor saves just the output that square() keeps: 2·8·24 floats.
    assert rows["floor (frozen base)"].memory_bytes == 4 * 2 * 8 * 24
    # LoRA adds x (for A's gradient) and the (…, 64) intermediate (for B's): 2·8·(16 + 64) floats.
    assert rows["LoRA r=64"].memory_bytes == 4 * 2 * 8 * (24 + 16 + 64)
    fused, literal = rows["AMoE-LoRA 16x4 + hypernetwork"], rows["AMoE-LoRA, literal Eq. 1-6 (loop)"]
    assert literal.trainable == fused.trainable and literal.memory_bytes > fused.memory_bytes
    assert all(row.step_s > 0 and not row.error for row in rows.values())


def test_op_counts_are_repeatable_and_order_the_variants():
    def counts():
        rows = bench.bench_projection(SHAPE, torch.device("cpu"), rounds=1, steps=1, warmup=0)
        return {r.variant: (r.aten_ops, r.autograd_nodes, r.kernels) for r in rows}

    first = counts()
    assert first == counts()  # the same on every run: a yardstick where timings are noise
    ops = {name: value[0] for name, value in first.items()}
    nodes = {name: value[1] for name, value in first.items()}
    # floor: linear (t, mm), square, mean forward; their backward; the leaf's detach
    assert (
        10 < ops["floor (frozen base)"] < ops["LoRA r=64"] < ops["LoRAMoE 16x4"] < ops["AMoE-LoRA 16x4 + hypernetwork"]
    )
    assert ops["AMoE-LoRA, literal Eq. 1-6 (loop)"] > 4 * ops["AMoE-LoRA 16x4 + hypernetwork"]
    assert nodes["floor (frozen base)"] < nodes["LoRA r=64"] < nodes["AMoE-LoRA 16x4 + hypernetwork"]
    # Orderings and ratios, not exact counts (those move with every torch release). What each
    # adapter adds over the floor grows with what it computes; the hand-written Functions cost
    # clearly fewer ops and autograd nodes than the same math as plain autograd ops, measured
    # beside them (torch 2.14: 81 against 113 added ops, 19 against 48 nodes).
    amoe, composed = "AMoE-LoRA 16x4 + hypernetwork", "AMoE-LoRA 16x4, autograd composition"
    added = {name: ops[name] - ops["floor (frozen base)"] for name in ("LoRA r=64", "LoRAMoE 16x4", amoe, composed)}
    assert 0 < added["LoRA r=64"] < added["LoRAMoE 16x4"] < added[amoe]
    assert added[composed] > 1.25 * added[amoe] and nodes[composed] > 2 * nodes[amoe]
    for same in ("AMoE-LoRA 16x4, shared inputs", "AMoE-LoRA 16x4, unaligned widths"):  # never add ops
        assert ops[same] <= ops[amoe]
    kernels = {name: value[2] for name, value in first.items()}
    assert kernels["floor (frozen base)"] < kernels["LoRA r=64"] < kernels["LoRAMoE 16x4"] < kernels[amoe]


def test_the_table_puts_every_variant_against_its_floor():
    rows = [
        bench.Result("model", "floor (frozen base)", 0, 0.2, 100),
        bench.Result("model", "LoRA r=64", 10, 0.3, 150, aten_ops=42, kernels=20, autograd_nodes=16),
        bench.Result("model", "LoRA r=64, compiled", 10, 0.25, 120, graphs=1, graph_breaks=0),
        bench.Result("model", "loop", 10, error="out of memory"),
    ]
    text = bench.table(rows, "test device", "peak allocated")
    assert "| model | floor (frozen base) | 0 | 200.0 | 1.00 | 0.0 | 1.00 | — | — | — | — |" in text
    assert "| model | LoRA r=64 | 10 | 300.0 | 1.50 | 0.0 | 1.50 | 42 | 20 | 16 | — |" in text
    assert "| model | LoRA r=64, compiled | 10 | 250.0 | 1.25 | 0.0 | 1.20 | — | — | — | 1 (0) |" in text
    assert "| model | loop | 10 | out of memory | | | | — | — | — | — |" in text


def test_generation_benchmark_checks_that_fresh_adapters_generate_the_adapter_free_tokens():
    generate = load_script("generate")
    shape = dict(
        batch=3,
        prompt=6,
        new_tokens=4,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=64,
    )
    speed, same = generate.run(shape, torch.device("cpu"), rounds=1)
    assert list(speed) == list(generate.VARIANTS) and all(same.values())


def test_gpu_suite_reports_each_failing_part_by_name_and_goes_on(tmp_path):
    suite = load_script("gpu_suite")
    py = sys.executable
    parts = [
        suite.Part("fails", 1, [[py, "-c", "print('first line'); raise SystemExit(3)"]]),
        suite.Part("hangs", 1, [[py, "-c", "import time; print('started', flush=True); time.sleep(60)"]]),
        suite.Part("needs-fails", 1, [[py, "-c", "pass"]], needs="fails"),
        suite.Part("runs", 5, [[py, "-c", "print('ran')"]]),
    ]
    # "hangs" may use what "fails" left over (about 3 s) but never the 6 s allotted after it
    failed = suite.run_all(parts, tmp_path, tmp_path, budget=10, meta={"device": "test"})
    assert failed == ["fails", "hangs", "needs-fails"]
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert [(p["name"], p["status"]) for p in report["parts"]] == [
        ("fails", "failed: exit status 3"),
        ("hangs", report["parts"][1]["status"]),
        ("needs-fails", "skipped: fails did not succeed"),
        ("runs", "ok"),
    ]
    assert report["parts"][1]["status"].startswith("out of time after ") and 3 < report["parts"][1]["seconds"] < 5
    log = (tmp_path / "gpu_suite.log").read_text()
    assert "=== fails" in log and "first line" in log and "started" in log and "ran" in log


def test_gpu_suite_dry_run_runs_every_part_at_tiny_shapes(tmp_path):
    """The GPU run's one try is prepared here: every part, with the commands the GPU run uses at
    tiny shapes on the CPU (aot_eager for inductor, no FSDP1: it refuses a CPU)."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_suite.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    parts = {p["name"]: p for p in json.loads((out / "gpu_suite.json").read_text())["parts"]}
    assert list(parts) == ["adapters-eager", "adapters-compiled", "generate", "setup", "stage2", "fsdp1"]
    assert {p["status"] for p in parts.values()} == {"ok"}
    eager = {r["variant"]: r for r in parts["adapters-eager"]["results"]["results"]}
    assert list(eager) == [
        "floor (frozen base)",
        "LoRA r=64",
        "LoRA r=64, shared inputs",
        "LoRAMoE 16x4",
        "LoRAMoE 16x4, shared inputs",
        "AMoE-LoRA 16x4 + hypernetwork",
        "AMoE-LoRA 16x4, shared inputs",
    ]
    assert all(r["step_s"] > 0 and not r["error"] for r in eager.values())
    assert len(eager["AMoE-LoRA 16x4 + hypernetwork"]["top_kernels"]) == 5
    compiled = {r["variant"]: r for r in parts["adapters-compiled"]["results"]["results"]}
    assert list(compiled) == ["floor (frozen base)"] + [
        f"{v}, compiled{s}"
        for v in ("floor (frozen base)", "LoRA r=64", "LoRAMoE 16x4", "AMoE-LoRA 16x4 + hypernetwork")
        for s in ("", " + CUDA graphs")
    ]
    for name, row in list(compiled.items())[1:]:  # the tiny shape's one decoder layer: one graph, no breaks
        assert (row["error"], row["graphs"], row["graph_breaks"]) == ("", 1, 0), name
    assert len(compiled["AMoE-LoRA 16x4 + hypernetwork, compiled"]["top_kernels"]) == 5
    assert parts["generate"]["results"]["same_tokens"] == {"no adapter": True, "AMoE-LoRA 16x4 + hypernetwork": True}
    assert [r["run"] for r in parts["stage2"]["results"]["results"]] == [
        "single device",
        "single device, compiled decoder layers",
    ]
    assert parts["fsdp1"]["results"] == {"checkpoint_global_step": 3}
