"""TensorBoard callbacks: throughput, the adapters' diagnostics (router load and entropy, each
component's output and gradient norms), the hypernetwork cores, example answers as text, and the
hyper-parameters with their final metrics for the HParams view; plus the prediction writer of
``maugpt predict`` and a sweep cell's files: its test metrics and the mark of a fit that ended
normally."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import move_data_to_device

from maugpt.adapters import adapter_diagnostics, adapter_layers
from maugpt.evaluation.run import write_gzip
from maugpt.model.mau_gpt import recording
from maugpt.tensorboard import tensorboard, tensorboard_logger


class ThroughputMonitor(L.Callback):
    """Logs ``train/tokens_per_s``: non-padding tokens (text and image slots) per second and rank."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        seconds = time.perf_counter() - self._start
        tokens = float(batch["attention_mask"].sum())
        pl_module.log("train/tokens_per_s", tokens / max(seconds, 1e-9), batch_size=batch["input_ids"].shape[0])


class RecordingScope:
    """The model's recording scope (``maugpt.model.mau_gpt.recording``) for one batch, opened in
    one Lightning hook and closed in a later one (or at teardown, if the batch never ended)."""

    def __init__(self) -> None:
        self._stack: contextlib.ExitStack | None = None

    @property
    def active(self) -> bool:
        return self._stack is not None

    def open(self, model: torch.nn.Module) -> None:
        self.close()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(recording(model))

    def close(self) -> bool:
        """Leave the scope; whether one was open."""
        if self._stack is None:
            return False
        self._stack.close()
        self._stack = None
        return True


class AdapterMonitor(L.Callback):
    """Every ``every_n_steps`` training steps, records one forward's adapter diagnostics and writes
    them to TensorBoard, so that a run shows how far each component moves the frozen model:

    * the MoE routers: per adapted layer, the router entropy (``router_entropy/<layer>``) and the
      mean weight per expert (histogram ``expert_load/<layer>``), and their average over layers
      (``adapters/router_entropy``);
    * each component's output against the frozen output: ``output_norm/<component>`` (the
      per-token L2 norm averaged over tokens and layers; components ``frozen``, ``generalist``,
      ``anomaly_aware``, ``lora``), ``output_ratio/<component>`` (each layer's component norm
      over its frozen norm, averaged over layers) and a histogram of that ratio over the layers;
    * each component's gradient norm before clipping (``grad_norm/<component>``: ``generalist``,
      ``router``, ``anomaly_aware``, ``lora``, ``projector``), over all layers and, under FSDP,
      all shards.
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps
        self._step = 0  # the optimizer step whose forward is recorded: every event is written at it
        self._recording = RecordingScope()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step
        if trainer.global_step % self.every_n_steps == 0:
            self._recording.open(pl_module.model)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._recording.close()  # a batch that raised never reached its end

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self._recording.active:
            return
        sharded = isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))
        norms = component_grad_norms(pl_module.model, sharded=sharded)
        writer = tensorboard(trainer)
        if writer is not None and trainer.is_global_zero:
            for component, value in norms.items():
                writer.add_scalar(f"grad_norm/{component}", value, self._step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._recording.close():
            return
        diagnostics = adapter_diagnostics(pl_module.model)
        writer, step = tensorboard(trainer), self._step
        if writer is not None:
            self.write_output_norms(writer, diagnostics, step)
        stats = {name: d for name, d in diagnostics.items() if "expert_load" in d}
        if not stats:
            return
        entropies = []
        for name, d in stats.items():
            entropies.append(float(d["router_entropy"]))
            if writer is not None:
                writer.add_scalar(f"router_entropy/{name}", entropies[-1], step)
                writer.add_histogram(f"expert_load/{name}", d["expert_load"].float().cpu(), step)
        pl_module.log("adapters/router_entropy", sum(entropies) / len(entropies))

    @staticmethod
    def write_output_norms(writer, diagnostics: dict[str, dict[str, torch.Tensor]], step: int) -> None:
        norms: dict[str, list[float]] = {}
        ratios: dict[str, list[float]] = {}
        for d in diagnostics.values():
            frozen = float(d["frozen_norm"]) if "frozen_norm" in d else None
            for key, value in d.items():
                if key.endswith("_norm"):
                    component = key[: -len("_norm")]
                    norms.setdefault(component, []).append(float(value))
                    if frozen and component != "frozen":
                        ratios.setdefault(component, []).append(float(value) / frozen)
        for component, values in norms.items():
            writer.add_scalar(f"output_norm/{component}", sum(values) / len(values), step)
        for component, values in ratios.items():
            writer.add_scalar(f"output_ratio/{component}", sum(values) / len(values), step)
            writer.add_histogram(f"output_ratio_by_layer/{component}", torch.tensor(values), step)


#: The name this callback had before it recorded more than the routers; older configs use it.
RouterMonitor = AdapterMonitor


def component_grad_norms(model: torch.nn.Module, *, sharded: bool = False) -> dict[str, float]:
    """The L2 norm of the gradients of each adapter component (:meth:`AdapterLayer.parameter_groups`)
    over all adapted layers, and of the projector's. ``sharded``: every rank holds a disjoint shard
    of each gradient (FSDP), so the squares are summed over ranks (a collective: every rank calls)."""
    squares: dict[str, torch.Tensor] = {}

    def add(component: str, params) -> None:
        for p in params:
            if p.grad is not None:
                grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad  # FSDP2: DTensor shards
                square = grad.detach().float().square().sum()
                squares[component] = squares[component] + square if component in squares else square

    for _, layer in adapter_layers(model):
        for component, params in layer.parameter_groups().items():
            add(component, params)
    projector = getattr(model, "projector", None)
    if projector is not None:
        add("projector", projector.parameters())
    if not squares:
        return {}
    names = sorted(squares)
    total = torch.stack([squares[n] for n in names])
    if sharded and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
    return dict(zip(names, total.sqrt().tolist()))


class HypernetworkCores(L.Callback):
    """The anomaly-aware expert's generated cores of validation samples in TensorBoard's embedding
    projector, labelled with product, defect class and domain: the paper's Fig. 5(c).

    Args:
        layer: the adapted layer whose cores are shown (a name pattern; the first match is used).
        max_samples: samples per validation run.
    """

    def __init__(self, layer: str = "self_attn.q_proj", max_samples: int = 500) -> None:
        self.layer, self.max_samples = layer, max_samples
        self._recording = RecordingScope()
        self._cores: list[torch.Tensor] = []
        self._labels: list[list[str]] = []

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._recording.close()  # a batch that raised never reached its end

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if len(self._labels) < self.max_samples:
            self._recording.open(pl_module.model)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._recording.close():
            return
        found = [
            (n, d["core"])
            for n, d in adapter_diagnostics(pl_module.model.llm).items()
            if "core" in d and self.layer in n
        ]
        if not found:
            return
        cores = found[0][1].flatten(1).float().cpu()
        for core, meta, valid in zip(cores, batch["meta"], batch["valid"].tolist()):
            if valid and len(self._labels) < self.max_samples:
                self._cores.append(core)
                self._labels.append([meta["product"], str(meta.get("defect_class") or "normal"), meta["domain"]])

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        writer = tensorboard(trainer)
        if writer is not None and self._cores and trainer.is_global_zero:
            writer.add_embedding(
                torch.stack(self._cores),
                metadata=self._labels,
                metadata_header=["product", "defect_class", "domain"],
                tag=f"hypernetwork_cores/{self.layer}",
                global_step=trainer.global_step,
            )
        self._cores, self._labels = [], []


class ExampleAnswers(L.Callback):
    """After each validation, the model answers the first ``examples`` validation questions and the
    answers are logged as a Markdown table (question, reference, answer) under ``val/examples``.

    Every rank generates (FSDP needs all ranks in each forward); rank 0 logs.

    Args:
        examples: questions answered each time.
        max_new_tokens: answer length limit (default: the model's).
    """

    def __init__(self, examples: int = 8, max_new_tokens: int | None = None) -> None:
        self.examples, self.max_new_tokens = examples, max_new_tokens
        self._batch: dict | None = None

    def prompts(self, trainer) -> dict:
        """The first ``examples`` validation prompts as one left-padded batch (read once)."""
        if self._batch is None:
            self._batch = trainer.datamodule.first_prompts("val", self.examples)
        return self._batch

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        writer = tensorboard(trainer)
        if trainer.sanity_checking or writer is None:
            return
        batch = trainer.datamodule.on_after_batch_transfer(
            move_data_to_device(self.prompts(trainer), pl_module.device), 0
        )
        answers = pl_module.generate_answers(batch, self.max_new_tokens)
        if not trainer.is_global_zero:
            return
        rows = ["| image | question | reference | answer |", "|---|---|---|---|"]
        for meta, answer, valid in zip(batch["meta"], answers, batch["valid"].tolist()):
            if valid:
                cells = [meta.get("key", ""), meta.get("question", ""), meta.get("reference", ""), answer.strip()]
                rows.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        writer.add_text("val/examples", "\n".join(rows), trainer.global_step)


class HParamsSummary(L.Callback):
    """Writes the model's and data's hyper-parameters to TensorBoard's HParams view with the run's
    metrics, so that runs can be compared there (``hparams/<metric>``, updated as they are logged).

    Args:
        metrics: logged metric names shown as HParams columns.
    """

    def __init__(self, metrics: list[str] | None = None) -> None:
        self.metrics = list(metrics or ["val/loss", "test/detection_accuracy", "test/rougeL"])
        self._declared = False

    def _params(self, trainer, pl_module) -> dict:
        parts = {"model": pl_module.hparams, "data": trainer.datamodule.hparams if trainer.datamodule else {}}
        # LightningCLI adds private entries (_class_path, _instantiator): not hyper-parameters
        return {
            f"{part}/{k}": v for part, hparams in parts.items() for k, v in hparams.items() if not k.startswith("_")
        }

    def _write(self, trainer, pl_module) -> None:
        logger = tensorboard_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        values = {
            f"hparams/{m}": float(trainer.callback_metrics[m]) for m in self.metrics if m in trainer.callback_metrics
        }
        if not self._declared:
            # The HParams plugin lists a metric only if it is declared with the hyper-parameters.
            logger.log_hyperparams(
                self._params(trainer, pl_module),
                {f"hparams/{m}": values.get(f"hparams/{m}", float("nan")) for m in self.metrics},
            )
            self._declared = True
        elif values:
            logger.log_metrics(values, trainer.global_step)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)


class JsonlPredictionWriter(L.pytorch.callbacks.BasePredictionWriter):
    """Writes ``maugpt predict`` answers as JSON lines (one file per rank when there are several),
    one row per image, and prints one summary line when the run ends, counted over every rank's rows:
    ``predict: 11 images, 10 answered, 1 skipped: 1 too large (a.png)``. A skipped image's row has
    ``"prediction": null``, its reason in ``skip_reason`` and the message naming the file in ``error``.

    Args:
        path: the output file; an existing file is refused unless ``overwrite``.
        overwrite: replace an existing file.
    """

    def __init__(self, path: str, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.path, self.overwrite = path, overwrite
        self._answered, self._skipped = 0, []

    def setup(self, trainer, pl_module, stage: str) -> None:
        path = Path(self.path)
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        if path.exists() and not self.overwrite:
            raise FileExistsError(f"{path} exists; set overwrite: true on JsonlPredictionWriter to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        self._path = path
        self._answered, self._skipped = 0, []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        with open(self._path, "a") as f:
            for row in prediction:
                f.write(json.dumps(row) + "\n")
                if row.get("prediction") is None:
                    name = Path(str(row.get("image", "?"))).name
                    self._skipped.append((name, row.get("skip_reason", "unreadable")))
                else:
                    self._answered += 1

    def on_predict_end(self, trainer, pl_module) -> None:
        from maugpt.evaluation.run import gather_rows

        counts = gather_rows(trainer, [{"answered": self._answered, "skipped": self._skipped}])  # every rank calls
        if trainer.is_global_zero:
            print(self.summary(sum(c["answered"] for c in counts), [s for c in counts for s in c["skipped"]]))

    @staticmethod
    def summary(answered: int, skipped: list[tuple[str, str]], shown: int = 3) -> str:
        """``predict: N images, A answered, S skipped: k <reason> (<names>), …`` from the answered
        count and the ``(image name, reason)`` of each skipped image: reasons in alphabetical order,
        each with its first ``shown`` names (sorted) and how many more."""
        by_reason: dict[str, list[str]] = {}
        for name, reason in skipped:
            by_reason.setdefault(reason, []).append(name)
        parts = []
        for reason, names in sorted(by_reason.items()):
            names = sorted(names)
            more = f", +{len(names) - shown} more" if len(names) > shown else ""
            parts.append(f"{len(names)} {reason} ({', '.join(names[:shown])}{more})")
        line = f"predict: {answered + len(skipped)} images, {answered} answered, {len(skipped)} skipped"
        return line + (": " + ", ".join(parts) if parts else "")


class MetricsJson(L.Callback):
    """Writes the test metrics (``trainer.callback_metrics``) to a JSON file when a test ends, on
    rank 0, atomically (a sweep takes the file's presence to mean the cell finished).

    Args:
        path: the output file (replaced by each test).
        evaluation: also copy the test's evaluation folder (``predictions.jsonl``, ``tables.md``, the
            CSVs; the answers as ``predictions.jsonl.gz``) here, first: a sweep's report compares
            cells answer by answer from it.
    """

    def __init__(self, path: str, evaluation: str | None = None) -> None:
        self.path = path
        self.evaluation = evaluation

    def on_test_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        if self.evaluation is not None:
            run = Path(trainer.log_dir or trainer.default_root_dir)
            written = sorted(run.glob("evaluation*/predictions.jsonl"), key=lambda p: p.stat().st_mtime)
            if not written:
                raise FileNotFoundError(f"MetricsJson: the test wrote no evaluation folder under {run}")
            target = Path(self.evaluation)
            shutil.copytree(
                written[-1].parent, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("predictions.jsonl")
            )
            write_gzip(target / "predictions.jsonl.gz", written[-1].read_bytes())  # committed: 10× smaller
        write_json_atomically(Path(self.path), {name: float(v) for name, v in trainer.callback_metrics.items()})


class FitFinished(L.Callback):
    """Writes ``{"global_step": …, "epoch": …}`` to a JSON file when a fit ends normally (its last
    step, or a callback's stop), on rank 0, atomically. A fit stopped by a signal or an error never
    writes it: a sweep cell tests only a fit that has it (see :func:`maugpt.sweep.run_cell`).

    Args:
        path: the output file.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            write_json_atomically(Path(self.path), {"global_step": trainer.global_step, "epoch": trainer.current_epoch})


def write_json_atomically(path: Path, value: dict) -> None:
    """``value`` as JSON in ``path``, through a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=1, sort_keys=True))
    temporary.replace(path)
