"""Every private torch and Lightning API maugpt relies on, in one place.

Each is used because no public API does the same job (say which below), and each has a test in
``tests/test_compat.py`` against its public equivalent or its documented behaviour, so that an
upgrade that moves one fails there, not in the middle of a run. ``pyproject.toml`` bounds the
versions these were checked with.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.cli import LightningCLI
from torch import Tensor

# -- torch: the backward kernels of the hand-written autograd Functions (maugpt.adapters.fused) ----
# The public route, autograd through F.softmax / F.gelu / F.layer_norm, would record the very graph
# the Functions exist to avoid; these are the kernels that autograd itself calls.


def softmax_backward(grad: Tensor, softmax: Tensor, dim: int) -> Tensor:
    """``∂L/∂logits`` of ``softmax = softmax(logits, dim)`` given ``∂L/∂softmax``, in ``softmax``'s dtype."""
    return torch._softmax_backward_data(grad, softmax, dim, softmax.dtype)


def gelu_backward(grad: Tensor, x: Tensor) -> Tensor:
    """``∂L/∂x`` of the exact (erf) ``gelu(x)`` given ``∂L/∂gelu(x)``."""
    return torch.ops.aten.gelu_backward(grad, x)


def layer_norm_with_stats(x: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """Parameter-free layer norm over the last dimension, with the mean and reciprocal standard
    deviation (``(…, 1)`` each) that :func:`layer_norm_backward` needs."""
    return torch.native_layer_norm(x, (x.shape[-1],), None, None, eps)


def layer_norm_backward(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
    """``∂L/∂x`` of :func:`layer_norm_with_stats` given ``∂L/∂y``."""
    return torch.ops.aten.native_layer_norm_backward(
        grad, x, (x.shape[-1],), mean, rstd, None, None, [True, False, False]
    )[0]


def version(tensor: Tensor) -> int:
    """The tensor's in-place version counter: it grows with every in-place change (an optimizer
    step, ``copy_``), which is what a cache of tensors derived from parameters must notice."""
    return tensor._version


# -- torch: what dynamo compiled (the benchmarks' and tests' account of torch.compile) -----------


def dynamo_counts() -> tuple[int, int]:
    """(graphs compiled, graph breaks) so far in this process, from dynamo's own counters
    (``torch.compiler.reset()`` clears them)."""
    counters = torch._dynamo.utils.counters
    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def explain(module, *args, **kwargs):
    """dynamo's account of compiling ``module(*args, **kwargs)``: ``graph_count``,
    ``graph_break_count``, ``break_reasons``."""
    return torch._dynamo.explain(module)(*args, **kwargs)


# -- Lightning: the trainer's state that its own signal handling reads -----------------------------


def cluster_environment(trainer: L.Trainer):
    """The trainer's cluster environment (SLURM's tells whether Lightning would requeue the job)."""
    return trainer._accelerator_connector.cluster_environment


def forget_received_sigterm(trainer: L.Trainer) -> None:
    """Clear the SIGTERM Lightning's handler recorded (``trainer.received_sigterm``), whose public
    property is read-only; with several ranks Lightning would otherwise end the fit unsaved."""
    trainer._signal_connector.received_sigterm = False


def steps_optimizer(trainer: L.Trainer) -> bool:
    """Whether the training batch that just ended is followed by an optimizer step (Lightning's own
    test: not accumulating gradients)."""
    return not trainer.fit_loop.epoch_loop._should_accumulate()


class HookedLightningCLI(LightningCLI):
    """LightningCLI with the two private steps maugpt changes turned into public hooks.

    * :meth:`trainer_callbacks`: the callbacks the trainer is built with (``_instantiate_trainer``);
    * ``apply_checkpoint_hyperparameters``: whether a ``--ckpt_path`` checkpoint's
      hyper-parameters are applied over the parsed config (``_parse_ckpt_path``; Lightning: yes).
    """

    apply_checkpoint_hyperparameters: bool = True

    def trainer_callbacks(self, config: dict, callbacks: list) -> list:
        """The callbacks to build the trainer with (``config``: the trainer's section)."""
        return callbacks

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        return super()._instantiate_trainer(config, self.trainer_callbacks(config, callbacks))

    def _parse_ckpt_path(self) -> None:
        if self.apply_checkpoint_hyperparameters:
            super()._parse_ckpt_path()
