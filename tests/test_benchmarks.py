"""The adapter benchmark's bookkeeping (never its timings): counts and saved-activation bytes."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location("bench_adapters", Path(__file__).parents[1] / "benchmarks" / "adapters.py")
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up there
spec.loader.exec_module(bench)

SHAPE = dict(batch=2, tokens=8, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
             num_attention_heads=2, num_key_value_heads=1, vocab_size=64)


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
    assert 10 < ops["floor (frozen base)"] < ops["LoRA r=64"] < ops["LoRAMoE 16x4"] < ops["AMoE-LoRA 16x4 + hypernetwork"]
    assert ops["AMoE-LoRA, literal Eq. 1-6 (loop)"] > 4 * ops["AMoE-LoRA 16x4 + hypernetwork"]
    assert nodes["floor (frozen base)"] < nodes["LoRA r=64"] < nodes["AMoE-LoRA 16x4 + hypernetwork"]
    # What each adapter adds over the floor with the hand-written Functions (the autograd
    # compositions they replaced added 25/59/115 ops and 10/19/43 nodes): a regression yardstick.
    added = {name: (ops[name] - ops["floor (frozen base)"], nodes[name] - nodes["floor (frozen base)"])
             for name in ("LoRA r=64", "LoRAMoE 16x4", "AMoE-LoRA 16x4 + hypernetwork")}
    assert added == {"LoRA r=64": (13, 4), "LoRAMoE 16x4": (44, 5), "AMoE-LoRA 16x4 + hypernetwork": (81, 13)}
    # the same math as plain autograd ops: what the Functions replaced, measured beside them
    composed = "AMoE-LoRA 16x4, autograd composition"
    assert (ops[composed], nodes[composed]) == (130, 48)
    kernels = {name: value[2] for name, value in first.items()}
    assert kernels["floor (frozen base)"] == 9 and kernels["AMoE-LoRA 16x4 + hypernetwork"] == 49


def test_the_compiled_variants_run_beside_the_eager_ones():
    rows = {r.variant: r for r in bench.bench_model(SHAPE, torch.device("cpu"), "aot_eager", rounds=1, steps=1,
                                                    warmup=1)}
    assert list(rows) == [*bench.VARIANTS, *bench.COMPILED]
    for name, (variant, _) in bench.COMPILED.items():
        assert not rows[name].error and rows[name].step_s > 0
        assert rows[name].trainable == rows[variant].trainable > 0
        assert rows[name].aten_ops is None and rows[variant].aten_ops > rows["floor (frozen base)"].aten_ops
    torch._dynamo.reset()


def test_the_table_puts_every_variant_against_its_floor():
    rows = [bench.Result("model", "floor (frozen base)", 0, 0.2, 100),
            bench.Result("model", "LoRA r=64", 10, 0.3, 150, aten_ops=42, kernels=20, autograd_nodes=16),
            bench.Result("model", "loop", 10, error="out of memory")]
    text = bench.table(rows, "test device", "peak allocated")
    assert "| model | floor (frozen base) | 0 | 200.0 | 1.00 | 0.0 | 1.00 | — | — | — |" in text
    assert "| model | LoRA r=64 | 10 | 300.0 | 1.50 | 0.0 | 1.50 | 42 | 20 | 16 |" in text
    assert "| model | loop | 10 | out of memory | | | | — | — | — |" in text


def test_generation_benchmark_checks_that_fresh_adapters_generate_the_adapter_free_tokens():
    spec = importlib.util.spec_from_file_location("bench_generate", Path(__file__).parents[1] / "benchmarks" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    shape = dict(batch=3, prompt=6, new_tokens=4, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=1, vocab_size=64)
    speed, same = generate.run(shape, torch.device("cpu"), rounds=1)
    assert list(speed) == list(generate.VARIANTS) and all(same.values())
