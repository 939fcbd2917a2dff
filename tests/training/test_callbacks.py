"""TensorBoard callbacks: what reaches the event files."""

from __future__ import annotations

import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from maugpt.training.cli import run
from tests.training.conftest import AMOE, stage_config


def test_router_components_throughput_and_cores_reach_tensorboard(tiny_base, synthetic_dir, tmp_path):
    path = stage_config(tmp_path, tiny_base, synthetic_dir, 2, batches=3, adapter=AMOE)
    config = yaml.safe_load(open(path))
    config["trainer"]["callbacks"] += [
        {"class_path": "maugpt.training.callbacks.ThroughputMonitor"},
        {"class_path": "maugpt.training.callbacks.AdapterMonitor", "init_args": {"every_n_steps": 2}},
        {"class_path": "maugpt.training.callbacks.HypernetworkCores", "init_args": {"max_samples": 5}},
    ]
    open(path, "w").write(yaml.safe_dump(config))
    run(["fit", "--config", path])
    log_dir = next((tmp_path / "tb" / "stage2").glob("version_*"))
    events = EventAccumulator(str(log_dir), size_guidance={"histograms": 0, "scalars": 0}).Reload()
    scalars = events.Tags()["scalars"]
    assert "train/tokens_per_s" in scalars and "adapters/router_entropy" in scalars
    layers = [t for t in scalars if t.startswith("router_entropy/")]
    assert len(layers) == 21  # 7 projections × the tiny LM's 3 decoder layers
    assert [v.step for v in events.Scalars(layers[0])] == [0, 2]  # the steps whose forwards were recorded
    assert any(t.startswith("expert_load/") for t in events.Tags()["histograms"])
    # each component against the frozen output, and each component's gradient norm, at steps 0 and 2
    for tag in [
        "output_norm/frozen",
        "output_norm/generalist",
        "output_norm/anomaly_aware",
        "output_ratio/generalist",
        "output_ratio/anomaly_aware",
        "grad_norm/generalist",
        "grad_norm/router",
        "grad_norm/anomaly_aware",
        "grad_norm/projector",
    ]:
        values = events.Scalars(tag)
        assert len(values) == 2 and all(v.value >= 0 for v in values), tag
    assert [v.step for v in events.Scalars("grad_norm/generalist")] == [0, 2]  # before those steps' updates
    assert [v.step for v in events.Scalars("output_ratio/anomaly_aware")] == [0, 2]
    assert events.Scalars("output_ratio/generalist")[0].value == 0.0  # B starts at zero
    assert events.Scalars("output_ratio/generalist")[1].value > 0 and events.Scalars("grad_norm/router")[1].value > 0
    assert "output_ratio_by_layer/generalist" in events.Tags()["histograms"]
    projector = list(log_dir.glob("*/hypernetwork_cores*/metadata.tsv")) or list(log_dir.glob("**/metadata.tsv"))
    lines = projector[0].read_text().splitlines()
    assert lines[0] == "product\tdefect_class\tdomain" and len(lines) == 6


def test_example_answers_and_hparams_reach_tensorboard(tiny_base, synthetic_dir, tmp_path):
    path = stage_config(tmp_path, tiny_base, synthetic_dir, 2, batches=2, adapter=AMOE, max_new_tokens=4)
    config = yaml.safe_load(open(path))
    config["trainer"]["limit_val_batches"] = 1
    config["trainer"]["callbacks"] += [
        {"class_path": "maugpt.training.callbacks.ExampleAnswers", "init_args": {"examples": 3}},
        {"class_path": "maugpt.training.callbacks.HParamsSummary"},
    ]
    open(path, "w").write(yaml.safe_dump(config))
    run(["fit", "--config", path])
    log_dir = next((tmp_path / "tb" / "stage2").glob("version_*"))
    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    texts = events.Tensors("val/examples/text_summary")
    assert len(texts) == 1 and texts[0].step == 2
    table = texts[0].tensor_proto.string_val[0].decode().splitlines()
    assert table[0] == "| image | question | reference | answer |" and len(table) == 2 + 3
    assert all(row.count(" | ") == 3 for row in table[2:])
    # HParams: the hyper-parameters are declared with the metric columns; val/loss is filled in
    plugin = events.PluginTagToContent("hparams")
    experiment = HParamsPluginData.FromString(plugin["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == [
        "hparams/val/loss",
        "hparams/test/detection_accuracy",
        "hparams/test/rougeL",
    ]
    hparams = HParamsPluginData.FromString(plugin["_hparams_/session_start_info"]).session_start_info.hparams
    assert hparams["model/adapter/class_path"].string_value == "maugpt.adapters.amoe_lora.AMoELoRA"
    assert hparams["model/adapter/init_args/experts"].number_value == 4
    assert hparams["data/batch_size"].number_value == 2 and hparams["model/stage"].number_value == 2
    assert not any(key.split("/")[1].startswith("_") for key in hparams)
    filled = events.Scalars("hparams/val/loss")
    assert filled[-1].step == 2 and filled[-1].value == filled[-1].value  # a number, not the NaN placeholder


def test_component_gradient_norms_are_the_norms_over_all_layers_of_each_components_gradients():
    from maugpt.adapters import AMoELoRA, adapter_layers, inject
    from maugpt.training.callbacks import component_grad_norms
    from tests.conftest import tiny_causal_lm

    model = tiny_causal_lm()
    inject(model, AMoELoRA(experts=2, rank=2, hyper_hidden=4))
    model.train()
    ids = torch.randint(1, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).loss.backward()
    layers = [layer for _, layer in adapter_layers(model)]
    by_hand = {
        "generalist": [g for layer in layers for g in (layer.generalist.A.grad, layer.generalist.B.grad)],
        "router": [layer.generalist.router.grad for layer in layers],
        "anomaly_aware": [p.grad for layer in layers for p in layer.anomaly_aware.parameters()],
    }
    norms = component_grad_norms(model)
    assert set(norms) == set(by_hand)
    for component, grads in by_hand.items():
        expected = torch.cat([g.flatten() for g in grads if g is not None]).norm().item()
        assert abs(norms[component] - expected) <= 1e-5 * max(expected, 1.0), component
