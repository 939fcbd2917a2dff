"""Training-step cost of each adapter relative to the frozen base, measured in one run.

Two settings, each with the same variants:

* ``projection``: one adapted ``d_in → d_out`` linear layer on ``x (B, T, d_in)``;
* ``model``: a Qwen2-architecture causal LM built from config (random weights, nothing
  downloaded) with the adapter on all seven projections of every decoder block.

A step is forward, backward and AdamW on the adapter's parameters. The **floor** is the frozen
base with no adapter and backward only to its input: the least any adapter can cost. Ratios are
against the floor measured in the same process, so a noisy machine shifts both alike.

Memory: on CUDA the peak allocated during the steps; on CPU (where PyTorch keeps no peak) the
activation bytes saved for backward, parameters excluded.

Op counts (the same on every run of a device kind): the aten operators one forward and backward
dispatches (views such as ``t`` or ``expand`` included; counted with a ``TorchDispatchMode``),
the *kernels* among them (the ops that write new memory) and the autograd nodes of the graph,
the floor's included: what bounds the step on a GPU once the arithmetic is small (kernel
launches and autograd overhead). The ``projection`` setting counts one adapted projection; the
``model`` setting (on CPU only) the whole model, so that ``(variant − floor) / adapted
projections`` shows what shared inputs save.

    python benchmarks/adapters.py                 # CPU shapes, or CUDA when present
    python benchmarks/adapters.py --shape 3b      # the Qwen2.5-3B shape of the GPU notes (CUDA)
    python benchmarks/adapters.py --shape 3b --compile inductor --warmup 2 --only model --profile 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from top_kernels import kernel_table, top_kernels
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, Qwen2Config

from maugpt.adapters import ALL_PROJECTIONS, Adapter, AMoELoRA, LoRA, LoRAMoE, inject, unwrap
from maugpt.adapters.reference import reference_forward
from maugpt.compat import dynamo_counts
from maugpt.model.units import compile_llm


class LoopedAMoELoRA(AMoELoRA):
    """AMoE-LoRA evaluated by the literal Eq. 1–6: a loop over experts, separate paths."""

    def wrap(self, base, context=None):
        layer = super().wrap(base, context)
        layer.forward = lambda x: reference_forward(layer, x)
        return layer


def composed_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """The same fused math (Eq. 1–6) composed of plain autograd ops: the form before the
    hand-written Functions, kept here as their baseline."""
    generalist, expert = layer.generalist, layer.anomaly_aware
    n, r, s = generalist.experts, generalist.rank, generalist.scale
    hyper = expert.hypernetwork
    c = F.layer_norm(layer.context.pooled_condition(x, layer.name), (hyper.d_in,))
    core = hyper.out(F.gelu(hyper.hidden(c))).view(-1, r, r)
    z = x @ torch.cat([generalist.A, expert.W_a, generalist.router], dim=1)
    z_experts, z_anomaly, logits = z.split([n * r, r, n], dim=-1)
    weights = F.softmax(logits, dim=-1)
    u = torch.cat(
        [
            (z_experts.unflatten(-1, (n, r)) * (weights * s).unsqueeze(-1)).flatten(-2),
            torch.bmm(z_anomaly, (core @ core) * s),
        ],
        dim=-1,
    )
    out = layer.base(x)
    up = torch.cat([generalist.B, expert.W_b], dim=0)
    return torch.addmm(out.reshape(-1, out.shape[-1]), u.reshape(-1, u.shape[-1]), up).view(out.shape)


class ComposedAMoELoRA(AMoELoRA):
    """AMoE-LoRA as plain autograd ops (:func:`composed_forward`)."""

    def wrap(self, base, context=None):
        layer = super().wrap(base, context)
        layer.forward = lambda x: composed_forward(layer, x)
        return layer


# Each variant is built for a list of target patterns; None is the floor (no adapter).
FLOOR = "floor (frozen base)"
VARIANTS: dict[str, Callable[[Sequence[str]], Adapter] | None] = {
    FLOOR: None,
    "LoRA r=64": lambda targets: LoRA(rank=64, alpha=128, targets=targets),
    "LoRA r=64, shared inputs": lambda targets: LoRA(rank=64, alpha=128, targets=targets, share_input=True),
    "LoRAMoE 16x4": lambda targets: LoRAMoE(experts=16, rank=4, alpha=8, dropout=0.0, targets=targets),
    "LoRAMoE 16x4, shared inputs": lambda targets: LoRAMoE(
        experts=16, rank=4, alpha=8, dropout=0.0, targets=targets, share_input=True
    ),
    "AMoE-LoRA 16x4 + hypernetwork": lambda targets: AMoELoRA(experts=16, rank=4, alpha=8, targets=targets),
    "AMoE-LoRA 16x4, shared inputs": lambda targets: AMoELoRA(
        experts=16, rank=4, alpha=8, targets=targets, share_input=True
    ),
    "AMoE-LoRA 16x4, unaligned widths": lambda targets: AMoELoRA(experts=16, rank=4, alpha=8, targets=targets, align=1),
    "AMoE-LoRA 16x4, autograd composition": lambda targets: ComposedAMoELoRA(
        experts=16, rank=4, alpha=8, targets=targets
    ),
    "AMoE-LoRA, literal Eq. 1-6 (loop)": lambda targets: LoopedAMoELoRA(experts=16, rank=4, alpha=8, targets=targets),
}

SHAPES = {  # batch, tokens, and the model config; the projection is hidden → intermediate
    "tiny": dict(
        batch=2,
        tokens=16,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
    ),  # a dry run's
    "cpu": dict(
        batch=2,
        tokens=256,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=8192,
    ),
    "3b": dict(
        batch=4,
        tokens=1024,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        vocab_size=151936,
    ),
}


@dataclass
class Result:
    setting: str
    variant: str
    trainable: int = 0
    step_s: float = float("nan")
    memory_bytes: int = 0
    error: str = ""
    aten_ops: int | None = None  # forward + backward
    kernels: int | None = None
    autograd_nodes: int | None = None
    graphs: int | None = None  # compiled variants: graphs dynamo made over all rounds (36 layers, one code: 1)
    graph_breaks: int | None = None
    top_kernels: list[dict] | None = None  # with --profile: the costliest kernels of one step


class OpCounter(TorchDispatchMode):
    """Counts every aten operator dispatched while it is active, backward ones included, and
    among them the *kernels*: the ops that write new memory (not views, reshapes or dtype queries)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.count += 1
        inputs = {
            t.untyped_storage().data_ptr()
            for t in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        outputs = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.kernels += any(t.untyped_storage().data_ptr() not in inputs for t in outputs)
        return out


def graph_nodes(output: torch.Tensor) -> int:
    """The autograd nodes ``output``'s backward runs (accumulate-grad leaves included)."""
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack += [next_node for next_node, _ in node.next_functions]
    return len(seen)


def count_ops(setup: Setup) -> tuple[int, int, int]:
    """(aten ops, kernels, autograd nodes) of one forward and backward of a variant."""
    module, make_loss, teardown = setup()
    try:
        with OpCounter() as counter:
            loss = make_loss()
            nodes = graph_nodes(loss)
            loss.backward()
        return counter.count, counter.kernels, nodes
    finally:
        teardown()


class SavedActivations:
    """Counts the distinct non-parameter storages autograd saves for backward (CPU memory proxy)."""

    def __init__(self, module: nn.Module) -> None:
        self.exclude = {p.untyped_storage().data_ptr() for p in module.parameters()}
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.exclude:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


# A variant's setup adapts the module and returns (module, loss function, teardown).
Setup = Callable[[], tuple[nn.Module, Callable[[], torch.Tensor], Callable[[], None]]]


def train_step(
    make_loss: Callable[[], torch.Tensor], opt: torch.optim.Optimizer | None, device: torch.device, hooks=None
) -> None:
    """One training step: forward (bf16 autocast on CUDA) under ``hooks`` if given, backward, AdamW."""
    torch.compiler.cudagraph_mark_step_begin()  # a new step for CUDA-graph replays (no-op otherwise)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"), hooks or nullcontext():
        loss = make_loss()
    loss.backward()
    if opt:
        opt.step()
        opt.zero_grad(set_to_none=True)


def run_rounds(
    setting: str,
    setups: dict[str, Setup],
    device: torch.device,
    rounds: int,
    steps: int,
    warmup: int,
    compiled: Sequence[str] = (),
) -> list[Result]:
    """Time every variant in turn, round after round, so that drift on a noisy machine hits all alike.

    Each round sets a variant up, runs ``warmup`` untimed and ``steps`` timed training steps
    (forward, backward, AdamW on the trainable parameters), and tears it down again. A variant
    that raises is reported with its error and skipped from then on. For the ``compiled``
    variants the graphs dynamo made in the last round and its graph breaks are counted too.
    """
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    results = {name: Result(setting, name) for name in setups}
    times: dict[str, list[float]] = {name: [] for name in setups}
    for round_index in range(rounds):
        for name, setup in setups.items():
            result = results[name]
            if result.error:
                continue
            graphs, breaks = dynamo_counts()
            module, make_loss, teardown = setup()
            params = [p for p in module.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-4) if params else None
            result.trainable = sum(p.numel() for p in params)
            saved = SavedActivations(module)
            try:
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                for i in range(warmup + steps):
                    sync()
                    t0 = time.perf_counter()
                    train_step(make_loss, opt, device, saved.hooks() if round_index == i == 0 and not cuda else None)
                    sync()
                    if i >= warmup:
                        times[name].append(time.perf_counter() - t0)
                memory = torch.cuda.max_memory_allocated() if cuda else sum(saved.storages.values())
                result.memory_bytes = max(result.memory_bytes, memory)
            except torch.OutOfMemoryError:
                result.error = "out of memory"
            except Exception as error:  # one variant that fails to run is a finding, not the end of the run
                traceback.print_exc()
                result.error = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:160]}"
            finally:
                del opt, params
                teardown()
                if cuda:
                    torch.cuda.empty_cache()
            if name in compiled:
                now_graphs, now_breaks = dynamo_counts()
                result.graphs, result.graph_breaks = now_graphs - graphs, now_breaks - breaks
    for name, result in results.items():
        if times[name] and not result.error:
            result.step_s = statistics.median(times[name])
    return list(results.values())


def profile_variant(setup: Setup, device: torch.device, rows: int, warmup: int = 2) -> list[dict]:
    """The ``rows`` costliest kernels of one training step of a variant, after ``warmup`` steps."""
    module, make_loss, teardown = setup()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4) if params else None
    try:
        for _ in range(warmup):
            train_step(make_loss, opt, device)
        return top_kernels(lambda: train_step(make_loss, opt, device), device, rows)
    finally:
        teardown()


def bench_projection(
    shape: dict, device: torch.device, variants: Sequence[str] | None = None, **timing
) -> list[Result]:
    """The projection setting for the eager ``variants`` (default: all), the floor first."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    base = nn.Linear(shape["hidden_size"], shape["intermediate_size"], bias=False, device=device, dtype=dtype)
    base.requires_grad_(False)
    x = torch.randn(shape["batch"], shape["tokens"], shape["hidden_size"], device=device, dtype=dtype)
    x.requires_grad_(True)  # as inside a model: the gradient flows on to the layer's input

    def setup_for(make) -> Setup:
        def setup():
            holder = nn.Sequential(base)  # the projection is child "0"
            if make is not None:
                inject(holder, make(["0"]))
            return holder, lambda: holder(x).float().square().mean(), lambda: unwrap(holder)

        return setup

    names = dict.fromkeys([FLOOR, *(name for name in (variants or VARIANTS) if name in VARIANTS)])
    setups = {name: setup_for(VARIANTS[name]) for name in names}
    results = run_rounds("projection", setups, device, **timing)
    for result in results:
        result.aten_ops, result.kernels, result.autograd_nodes = count_ops(setups[result.variant])
    return results


# With --compile: the model setting also runs these, (variant, torch.compile mode) each, with
# compile_llm's decoder layers compiled: by the backend alone, and with inductor's CUDA graphs.
COMPILED = {
    f"{variant}, compiled{suffix}": (variant, mode)
    for variant in (FLOOR, "LoRA r=64", "LoRAMoE 16x4", "AMoE-LoRA 16x4 + hypernetwork")
    for suffix, mode in (("", None), (" + CUDA graphs", "reduce-overhead"))
}
# With --profile N: the top N kernels of one step of these.
PROFILED = ("AMoE-LoRA 16x4 + hypernetwork", "AMoE-LoRA 16x4 + hypernetwork, compiled")


def bench_model(
    shape: dict,
    device: torch.device,
    compile_backend: str | None = None,
    profile: int = 0,
    variants: Sequence[str] | None = None,
    **timing,
) -> list[Result]:
    """The model setting for ``variants`` (default: every eager one, and with ``compile_backend``
    every compiled one), the floor first."""
    cuda = device.type == "cuda"
    config = Qwen2Config(
        **{k: v for k, v in shape.items() if k not in ("batch", "tokens")},
        max_position_embeddings=max(4096, shape["tokens"]),
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: a 3B model's init on the host takes a minute
        model = AutoModelForCausalLM.from_config(
            config, attn_implementation="sdpa", dtype=torch.bfloat16 if cuda else torch.float32
        )
    model.requires_grad_(False)
    ids = torch.randint(0, config.vocab_size, (shape["batch"], shape["tokens"]), device=device)
    embed = model.get_input_embeddings()

    def setup_for(make, compile_mode: str | None | bool = False) -> Setup:
        compiled: list[nn.Module] = []

        def loss() -> torch.Tensor:
            inputs = embed(ids).detach().requires_grad_(make is None)  # the floor: backward to the input
            return model(inputs_embeds=inputs, labels=ids, use_cache=False).loss  # training: no KV cache

        def teardown() -> None:
            if compiled:  # back to eager; a fresh dynamo for the next variant (and CUDA-graph pools freed)
                for unit in compiled:
                    unit._compiled_call_impl = None
                compiled.clear()
                torch.compiler.reset()
            unwrap(model)
            model.requires_grad_(False)

        def setup():
            if make is not None:
                inject(model, make(ALL_PROJECTIONS))
                model.to(device)
            if compile_mode is not False:  # compiles at the first (untimed warm-up) step of each round
                compiled.extend(compile_llm(model, "decoder_layers", backend=compile_backend, mode=compile_mode))
            return model, loss, teardown

        return setup

    if variants is None:
        variants = [*VARIANTS, *(COMPILED if compile_backend else ())]
    elif compile_backend is None and any(name in COMPILED for name in variants):
        raise ValueError("compiled variants need a compile backend")
    setups = {
        name: setup_for(VARIANTS[COMPILED[name][0]], COMPILED[name][1])
        if name in COMPILED
        else setup_for(VARIANTS[name])
        for name in dict.fromkeys([FLOOR, *variants])
    }
    results = run_rounds("model", setups, device, compiled=list(COMPILED), **timing)
    if device.type == "cpu":  # on a GPU one counting pass of the 3B model would take minutes
        for result in (r for r in results if r.variant not in COMPILED):  # compiled code bypasses the counter
            result.aten_ops, result.kernels, result.autograd_nodes = count_ops(setups[result.variant])
    if profile:
        for result in (r for r in results if r.variant in PROFILED and not r.error):
            result.top_kernels = profile_variant(setups[result.variant], device, profile)
    return results


def table(results: list[Result], device_name: str, memory_label: str) -> str:
    lines = [
        f"device: {device_name}",
        "",
        f"| setting | variant | trainable params | step ms | × floor | {memory_label} MiB | × floor "
        "| aten ops fwd+bwd | kernels | autograd nodes | dynamo graphs (breaks) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for setting in dict.fromkeys(r.setting for r in results):
        rows = [r for r in results if r.setting == setting]
        floor = rows[0]
        for r in rows:
            ops = f"{r.aten_ops} | {r.kernels} | {r.autograd_nodes}" if r.aten_ops is not None else "— | — | —"
            ops += f" | {r.graphs} ({r.graph_breaks})" if r.graphs is not None else " | —"
            if r.error:
                lines.append(f"| {setting} | {r.variant} | {r.trainable:,} | {r.error} | | | | {ops} |")
                continue
            lines.append(
                f"| {setting} | {r.variant} | {r.trainable:,} | {r.step_s * 1e3:.1f} | "
                f"{r.step_s / floor.step_s:.2f} | {r.memory_bytes / 2**20:.1f} | "
                f"{r.memory_bytes / max(floor.memory_bytes, 1):.2f} | {ops} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu", help="sizes to run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=4, help="rounds over all variants")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant and round")
    parser.add_argument("--only", choices=["projection", "model"], help="run one setting")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument(
        "--compile",
        metavar="BACKEND",
        help="also run the model setting with compile_llm's decoder "
        "layers compiled by this torch.compile backend (inductor), alone and with CUDA graphs "
        "(mode reduce-overhead); use --warmup 2 or more: each round compiles again",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also list the N costliest kernels of one step of: " + ", ".join(PROFILED),
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        help="run only the variants, eager or compiled, whose names start with these (the eager floor always runs)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.shape == "3b" and device.type != "cuda":
        parser.error("--shape 3b needs a CUDA device (a 3B model's steps take minutes on a CPU)")
    shape = SHAPES[args.shape]
    names = [*VARIANTS, *(COMPILED if args.compile else ())]
    variants = [name for name in names if name.startswith(tuple(args.variants or [""]))]
    timing = dict(rounds=args.rounds, steps=args.steps, warmup=args.warmup)
    results = []
    if args.only in (None, "projection"):
        results += bench_projection(shape, device, variants, **timing)
    if args.only in (None, "model"):
        results += bench_model(shape, device, args.compile, args.profile, variants, **timing)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    label = "peak allocated" if device.type == "cuda" else "saved activations"
    print(
        f"shape {args.shape}: batch {shape['batch']} × {shape['tokens']} tokens, hidden {shape['hidden_size']}, "
        f"MLP {shape['intermediate_size']}, {shape['num_hidden_layers']} layers; torch {torch.__version__}"
    )
    print(table(results, name, label))
    for result in (r for r in results if r.top_kernels):
        print("\n" + kernel_table(f"one step of {result.variant}, by own time", result.top_kernels))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "shape": args.shape, "results": [vars(r) for r in results]}, f, indent=1)


if __name__ == "__main__":
    main()
