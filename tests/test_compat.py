"""The private torch and Lightning APIs in ``maugpt.compat``, each against its public equivalent or
its documented behaviour: an upgrade that moves one fails here."""

from __future__ import annotations

import inspect

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel

from maugpt import compat


def double(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_softmax_and_gelu_backward_equal_autograd():
    logits, grad = double(5, 4, seed=0).requires_grad_(), double(5, 4, seed=1)
    softmax = torch.softmax(logits, dim=-1)
    (expected,) = torch.autograd.grad(softmax, logits, grad)
    assert torch.allclose(compat.softmax_backward(grad, softmax.detach(), -1), expected, atol=1e-14)
    x, grad = double(6, 3, seed=2).requires_grad_(), double(6, 3, seed=3)
    (expected,) = torch.autograd.grad(F.gelu(x), x, grad)
    assert torch.allclose(compat.gelu_backward(grad, x.detach()), expected, atol=1e-14)


def test_layer_norm_with_its_statistics_and_its_backward_equal_the_functional_form():
    x, grad = double(4, 7, seed=3).requires_grad_(), double(4, 7, seed=4)
    y, mean, rstd = compat.layer_norm_with_stats(x.detach(), 1e-5)
    reference = F.layer_norm(x, (7,), eps=1e-5)
    assert torch.allclose(y, reference, atol=1e-14)
    assert torch.allclose(mean.flatten(), x.detach().mean(-1), atol=1e-14)
    assert torch.allclose(rstd.flatten(), (x.detach().var(-1, unbiased=False) + 1e-5).rsqrt(), atol=1e-12)
    (expected,) = torch.autograd.grad(reference, x, grad)
    assert torch.allclose(compat.layer_norm_backward(grad, x.detach(), mean, rstd), expected, atol=1e-12)


def test_the_version_counter_grows_with_each_in_place_change_only():
    p = torch.nn.Parameter(torch.zeros(3))
    before = compat.version(p)
    _ = p * 2  # out of place: unchanged
    assert compat.version(p) == before
    with torch.no_grad():
        p.add_(1.0)
        p.copy_(torch.ones(3))
    assert compat.version(p) == before + 2


def test_the_trainer_state_the_signal_handling_reads_and_clears(tmp_path):
    environment = LightningEnvironment()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[environment],
        max_steps=2,
        accumulate_grad_batches=2,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    assert compat.cluster_environment(trainer) is environment
    trainer._signal_connector.received_sigterm = True  # as Lightning's SIGTERM handler records it
    assert trainer.received_sigterm
    compat.forget_received_sigterm(trainer)
    assert not trainer.received_sigterm

    steps: list[bool] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            steps.append(compat.steps_optimizer(trainer))

    trainer.callbacks.append(Record())
    trainer.fit(BoringModel())
    assert steps == [False, True, False, True]  # two batches per optimizer step


def test_the_cli_hooks_exist_in_lightning_with_the_signatures_overridden():
    assert list(inspect.signature(LightningCLI._instantiate_trainer).parameters) == ["self", "config", "callbacks"]
    assert list(inspect.signature(LightningCLI._parse_ckpt_path).parameters) == ["self"]
    assert compat.HookedLightningCLI.apply_checkpoint_hyperparameters is True


def test_dynamo_counts_and_explain_report_the_graphs_compiled():
    torch.compiler.reset()
    graphs, breaks = compat.dynamo_counts()  # the counters run for the whole process
    layer = torch.nn.Linear(4, 3)
    torch.compile(layer, backend="eager")(torch.randn(2, 4))
    assert compat.dynamo_counts() == (graphs + 1, breaks)
    explained = compat.explain(layer, torch.randn(2, 4))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    torch.compiler.reset()
