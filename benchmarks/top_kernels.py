"""Where one training step spends its time, by ``torch.profiler``: the top kernels.

On CUDA the rows are the device's kernels (and copies), grouped by name, by their own time on the
GPU; on a CPU (a dry run) they are the aten operators by their own CPU time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


def top_kernels(step: Callable[[], None], device: torch.device, rows: int = 15) -> list[dict]:
    """Profile one call of ``step`` (already warmed up) and return its ``rows`` costliest kernels.

    Each row: ``name``, ``calls``, ``ms`` (own time summed over the calls) and ``share`` of the
    step's total kernel time.
    """
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    kind = DeviceType.CUDA if cuda else DeviceType.CPU
    averages = [a for a in prof.key_averages() if a.device_type == kind]
    own = (lambda a: a.self_device_time_total) if cuda else (lambda a: a.self_cpu_time_total)
    total = sum(own(a) for a in averages) or 1.0
    ranked = sorted(averages, key=own, reverse=True)[:rows]
    return [{"name": a.key[:120], "calls": a.count, "ms": own(a) / 1e3, "share": own(a) / total} for a in ranked]


def kernel_table(title: str, rows: list[dict]) -> str:
    lines = [f"{title}", "", "| kernel | calls | ms | share |", "|---|---:|---:|---:|"]
    lines += [f"| `{r['name']}` | {r['calls']} | {r['ms']:.2f} | {r['share']:.1%} |" for r in rows]
    return "\n".join(lines)
