"""``MAUGPTModule``: stage-wise training of MAU-GPT (the paper's Sec. 4.3) as one LightningModule,
on :class:`StagedModule`, the recipe any vision-language network trains and is tested with.

Stage 1 trains the projector alone (captions); stage 2 trains the adapters and the projector
(MAU-Set), starting from stage 1's projector. Which parameters train follows from the stage and
the adapter, never from editing code. Checkpoints hold only the trainable tensors and the
optimizer state: the frozen encoder and LLM are rebuilt from their own files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch import Tensor
from transformers import LogitsProcessorList

from maugpt.adapters import Adapter, auxiliary_loss
from maugpt.adapters.generalist import upgrade_names
from maugpt.model import MAUGPT
from maugpt.model.mau_gpt import FirstTokenLogprobs, model_inputs
from maugpt.training.schedule import (
    OptimizerCallable,
    SchedulerCallable,
    WarmupCosine,
    component_config,
    default_optimizer,
)

log = logging.getLogger(__name__)


class StagedModule(L.LightningModule):
    """The training recipe and the test and predict steps, for any vision-language network.

    A subclass builds the network in :meth:`build` from its own arguments (``self.hparams``):
    :class:`MAUGPTModule` assembles MAU-GPT, :class:`~maugpt.training.pretrained.PretrainedVLMModule`
    loads a pretrained transformers VLM. The network has ``projector``, ``llm`` (where the adapter
    goes), ``vision`` and ``tokenizer``, and ``forward``/``generate`` over its data's batches.

    Args:
        stage: 1 trains the projector only; 2 trains the adapter and the projector.
        adapter: the adapter (``class_path``/``init_args``); required in stage 2, absent in stage 1.
        init_from: a previous stage's checkpoint whose trainable tensors are loaded first
            (stage 2: stage 1's projector).
        lr: peak learning rate of the adapter parameters (and of everything in stage 1).
        projector_lr: peak learning rate of the projector (default: ``lr``).
        weight_decay: weight decay of matrices (biases and norms get none).
        warmup_ratio: share of the steps with linear warm-up before the cosine decay (the default
            ``scheduler``, :class:`~maugpt.training.schedule.WarmupCosine`).
        gradient_checkpointing: recompute the LLM's activations in backward to save memory.
        nonfinite: what a non-finite loss does: ``stop`` the run naming the step, or ``skip``
            the batch and count it.
        max_new_tokens: generation length in test and predict.
        loss_reduction: ``token`` averages the LM loss over all answer tokens of a batch;
            ``example`` averages within each example first, so that a one-word answer (True or
            False) weighs as much as a long description.
        optimizer: builds the optimizer from the parameter groups (projector, adapter matrices,
            adapter biases and norms, each with its learning rate and weight decay); default
            AdamW with β = (0.9, 0.999). In YAML: ``class_path: torch.optim.SGD`` with ``init_args``.
        scheduler: builds the per-step learning-rate schedule from the optimizer and the run's
            total optimizer steps; default ``WarmupCosine(warmup_ratio)``
            (see :mod:`maugpt.training.schedule`).
    """

    def __init__(
        self,
        stage: Literal[1, 2] = 2,
        adapter: Adapter | None = None,
        init_from: str | None = None,
        lr: float = 2e-4,
        projector_lr: float | None = None,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.03,
        gradient_checkpointing: bool = False,
        nonfinite: Literal["stop", "skip"] = "stop",
        max_new_tokens: int = 64,
        loss_reduction: Literal["token", "example"] = "token",
        optimizer: OptimizerCallable | None = None,
        scheduler: SchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        if stage == 1 and adapter is not None:
            raise ValueError("stage 1 trains only the projector: remove model.adapter from the stage-1 config")
        if stage == 2 and adapter is None:
            raise ValueError("stage 2 trains an adapter: set model.adapter (e.g. configs/adapters/amoe_lora.yaml)")
        if init_from is not None and not Path(init_from).is_file():
            raise FileNotFoundError(
                f"init_from checkpoint {init_from} does not exist: run the previous stage first "
                "(its checkpoint is written under the run's checkpoints/ folder)"
            )
        # Collects the subclass's arguments too (Lightning reads every __init__ frame of the call).
        self.save_hyperparameters(ignore=["adapter", "optimizer", "scheduler"])
        self.hparams["adapter"] = adapter.to_config() if adapter is not None else None
        # Plain data in the checkpoint (weights_only loading), as LightningCLI's YAML gave them.
        self.hparams["optimizer"], self.hparams["scheduler"] = component_config(optimizer), component_config(scheduler)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.model = self.build(adapter)
        if gradient_checkpointing:
            self.model.llm.activation_checkpointing_enable({"use_reentrant": False})
        if init_from is not None:
            self.load_trainable(init_from)
        self.strict_loading = False  # checkpoints hold the trainable tensors only
        self.skipped_nonfinite = 0
        self.evaluation = None  # the test data's Evaluation (maugpt.evaluation.run), set when a test starts

    def build(self, adapter: Adapter | None) -> torch.nn.Module:
        """The network, from ``self.hparams``, with ``adapter`` in its LLM."""
        raise NotImplementedError

    def configure_model(self) -> None:
        """Shard with FSDP2 under ``ModelParallelStrategy`` (configs/strategy/fsdp.yaml); under FSDP1
        (``FSDPStrategy``, configs/strategy/fsdp1.yaml) Lightning wraps and ranks generate in lockstep."""
        from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

        if self._trainer is None:
            return
        if isinstance(self.trainer.strategy, FSDPStrategy):  # Lightning wraps (AdapterWrapPolicy)
            self.model.synced_generation = self.trainer.world_size > 1
            return
        if not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return
        from maugpt.training.sharding import shard_model

        dtype = next(self.model.llm.parameters()).dtype  # the frozen parts' dtype
        shard_model(self.model, self.device_mesh, param_dtype=None if dtype == torch.float32 else dtype)

    # -- what trains --------------------------------------------------------------------------
    @property
    def image_tokens(self) -> int:
        return self.model.image_tokens

    def trainable_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def load_trainable(self, path: str) -> None:
        """Load a previous stage's trainable tensors (e.g. stage 1's projector) from its checkpoint."""
        state = upgrade_names(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
        own = dict(self.named_parameters())
        missing = [k for k in state if k not in own]
        if missing:
            raise ValueError(f"{path} holds tensors this model does not have: {missing[:5]}")
        with torch.no_grad():
            for name, tensor in state.items():
                if own[name].shape != tensor.shape:
                    raise ValueError(f"{path}: {name} is {tuple(tensor.shape)} there, {tuple(own[name].shape)} here")
                own[name].copy_(tensor)
        log.info("loaded %d tensors from %s", len(state), path)

    def state_dict(self, *args, **kwargs):
        """Only the trainable tensors: the frozen encoder and LLM are rebuilt from their files."""
        state = super().state_dict(*args, **kwargs)
        trainable = set(self.trainable_names())
        prefix = kwargs.get("prefix", "")
        return type(state)((k, v) for k, v in state.items() if k[len(prefix) :] in trainable)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["maugpt"] = {
            "stage": self.hparams.stage,
            "trainable": self.trainable_names(),
            "adapter": self.hparams.adapter,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Loading is not strict (the frozen parts are not in the file), so check here that the file
        holds exactly this model's trainable tensors: another adapter or stage fails, naming both."""
        saved = checkpoint.get("maugpt", {})
        if "state_dict" in checkpoint:  # tensors saved under an earlier version's names are renamed
            checkpoint["state_dict"] = upgrade_names(checkpoint["state_dict"])
        if "trainable" in saved:
            saved["trainable"] = list(upgrade_names(dict.fromkeys(saved["trainable"])))
        # The names saved beside the tensors: under FSDP the strategy has consumed the tensors already.
        held, own = set(saved.get("trainable", checkpoint.get("state_dict", {}))), set(self.trainable_names())
        if held != own:
            raise ValueError(
                f"the checkpoint's trainable tensors do not fit this model ({len(held - own)} not in the model, e.g. "
                f"{sorted(held - own)[:2]}; {len(own - held)} missing, e.g. {sorted(own - held)[:2]}): it was saved "
                f"by stage {saved.get('stage')} with adapter {saved.get('adapter')}, this model is stage "
                f"{self.hparams.stage} with adapter {self.hparams.adapter}"
            )

    # -- steps ----------------------------------------------------------------------------------
    def lm_loss(self, batch: dict) -> Tensor:
        """The next-token loss of the batch's answers, reduced as ``loss_reduction`` says."""
        if self.hparams.loss_reduction == "token":
            return self.model(**model_inputs(batch)).loss
        logits = self.model(**model_inputs(batch, labels=None)).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), labels, reduction="none")
        counts = (labels != -100).sum(1)
        per_example = per_token.sum(1) / counts.clamp_min(1)
        return per_example[counts > 0].mean()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        lm_loss = self.lm_loss(batch)
        aux = auxiliary_loss(self.model.llm) if self.model.adapter is not None else None
        loss = lm_loss + aux if aux is not None else lm_loss
        if not torch.isfinite(loss):
            if self.hparams.nonfinite == "stop":
                raise FloatingPointError(
                    f"non-finite loss {loss.item()} at global step {self.global_step} "
                    f"(batch {batch_idx}); set model.nonfinite: skip to skip such batches"
                )
            self.skipped_nonfinite += 1
            self.log("train/skipped_nonfinite", float(self.skipped_nonfinite))
            return None
        batch_size = batch["input_ids"].shape[0]
        self.log("train/loss", lm_loss, prog_bar=True, batch_size=batch_size)
        if aux is not None:
            self.log("train/aux_loss", aux, batch_size=batch_size)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        valid = batch["valid"]
        labels = batch["labels"].masked_fill(~valid[:, None], -100)  # padding examples count nothing
        if not (labels != -100).any():
            return
        out = self.model(**model_inputs(batch, labels=labels))
        self.log("val/loss", out.loss, prog_bar=True, sync_dist=True, batch_size=int(valid.sum()))

    def generate_answers(self, batch: dict, max_new_tokens: int | None = None, **generate_kwargs) -> list[str]:
        """Answers to a batch of left-padded prompts: greedy unless ``generate_kwargs`` ask for sampling
        (``max_new_tokens`` defaults to the model's)."""
        tokens = self.model.generate(
            **model_inputs(batch), max_new_tokens=max_new_tokens or self.hparams.max_new_tokens, **generate_kwargs
        )
        return self.model.tokenizer.batch_decode(tokens, skip_special_tokens=True)

    def on_test_start(self) -> None:
        data = self.trainer.datamodule
        if data is None or not hasattr(data, "evaluation"):
            raise ValueError(
                "maugpt test needs a data module with an evaluation() (MAUSetDataModule, "
                f"MMADDataModule); got {type(data).__name__}"
            )
        self.evaluation = data.evaluation()  # None: batches are scored by their loss
        if self.evaluation is not None:
            self.evaluation.to(self.device)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        if "labels" in batch:  # the data module's test_mode: loss
            return self.validation_step(batch, batch_idx)
        # Multiple-choice data asks for its option letters' probabilities as the first answer token.
        first = FirstTokenLogprobs(batch["choice_ids"]) if "choice_ids" in batch else None
        processors = LogitsProcessorList([first] if first is not None else [])
        # The benchmark's own decoding (e.g. an MMAD query script's sampling settings), if it has one.
        decoding = getattr(self.evaluation, "generate_kwargs", None) or {}
        answers = self.generate_answers(batch, logits_processor=processors, **decoding)
        for i, (meta, answer, valid) in enumerate(zip(batch["meta"], answers, batch["valid"].tolist())):
            if valid:
                self.evaluation.add(meta, answer.strip(), first.logprobs[i].tolist() if first is not None else None)

    def on_test_epoch_end(self) -> None:
        if self.evaluation is None:
            return  # test batches were scored by their loss (validation_step)
        for name, value in self.evaluation.finish(self.trainer).items():
            self.log(f"test/{name}", value, rank_zero_only=True)
        self.evaluation = None

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        answers = self.generate_answers(batch)
        return [
            {**meta, "prediction": answer.strip() if valid else None}
            for meta, answer, valid in zip(batch["meta"], answers, batch["valid"].tolist())
            if not meta.get("padding")
        ]  # a slot filler of an uneven split across ranks

    # -- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self):
        projector = [p for n, p in self.model.projector.named_parameters() if p.requires_grad]
        projector_ids = {id(p) for p in projector}
        rest = [(n, p) for n, p in self.named_parameters() if p.requires_grad and id(p) not in projector_ids]
        decay = self.hparams.weight_decay
        groups = [
            {
                "params": projector,
                "lr": self.hparams.projector_lr or self.hparams.lr,
                "weight_decay": 0.0,
                "name": "projector",
            }
        ]
        if rest:
            groups += [
                {
                    "params": [p for _, p in rest if p.dim() > 1],
                    "lr": self.hparams.lr,
                    "weight_decay": decay,
                    "name": "adapter",
                },
                {
                    "params": [p for _, p in rest if p.dim() <= 1],
                    "lr": self.hparams.lr,
                    "weight_decay": 0.0,
                    "name": "adapter_no_decay",
                },
            ]
        optimizer = (self.optimizer_factory or default_optimizer)([g for g in groups if g["params"]])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if self.scheduler_factory is None:
            scheduler = WarmupCosine(optimizer, total, self.hparams.warmup_ratio)
        else:
            scheduler = self.scheduler_factory(optimizer, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def parameter_summary(self) -> dict[str, int]:
        """Trainable counts per part, for logs and tests."""
        parts = {"projector": self.model.projector, "adapter": self.model.llm, "vision": self.model.vision}
        counted: set[int] = set()  # a part inside another (Qwen2.5-VL's projector is in its vision tower) counts once
        summary = {}
        for name, module in parts.items():
            summary[name] = sum(p.numel() for p in module.parameters() if p.requires_grad and id(p) not in counted)
            counted |= {id(p) for p in module.parameters()}
        return summary


class MAUGPTModule(StagedModule):
    """MAU-GPT with its training recipe (the recipe's arguments: :class:`StagedModule`).

    Args:
        llm: the frozen causal LM (folder or hub id); its tokenizer must be the data's.
        vision_encoder: the frozen timm encoder (name or folder).
        projector: projector kind (``mlp2x_gelu``).
        feature_layer: encoder block whose patch features are used (−2: penultimate).
        vision_pretrained: load the encoder's weights (or a checkpoint file path).
        llm_pretrained: load the LLM's weights (False: build from its config).
        llm_dtype: dtype of the frozen parts (``float32``, ``bfloat16``).
        attn_implementation: transformers attention implementation.
        trust_remote_code: allow the LLM repository's own code.
        compile_llm: ``torch.compile`` the LLM's ``decoder_layers`` (one graph each, adapters
            included) or only its ``adapters``; ``none`` runs eager (see ``maugpt.model.units``).
        compile_backend: the ``torch.compile`` backend (``inductor``; ``aot_eager`` to debug).
    """

    def __init__(
        self,
        llm: str,
        vision_encoder: str,
        projector: str = "mlp2x_gelu",
        feature_layer: int = -2,
        vision_pretrained: bool | str = True,
        llm_pretrained: bool = True,
        llm_dtype: str = "float32",
        attn_implementation: str = "sdpa",
        trust_remote_code: bool = False,
        compile_llm: Literal["none", "decoder_layers", "adapters"] = "none",
        compile_backend: str = "inductor",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)

    def build(self, adapter: Adapter | None) -> MAUGPT:
        h = self.hparams
        return MAUGPT(
            h.llm,
            h.vision_encoder,
            h.projector,
            adapter,
            h.feature_layer,
            h.vision_pretrained,
            h.llm_pretrained,
            h.llm_dtype,
            h.attn_implementation,
            h.trust_remote_code,
            h.compile_llm,
            h.compile_backend,
        )
