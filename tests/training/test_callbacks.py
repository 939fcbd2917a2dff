"""TensorBoard callbacks: what reaches the event files."""
from __future__ import annotations

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from maugpt.training.cli import run
from tests.training.conftest import AMOE, stage_config


def test_router_throughput_and_cores_reach_tensorboard(tiny_base, synthetic_dir, tmp_path):
    path = stage_config(tmp_path, tiny_base, synthetic_dir, 2, batches=3, adapter=AMOE)
    config = yaml.safe_load(open(path))
    config["trainer"]["callbacks"] += [
        {"class_path": "maugpt.training.callbacks.ThroughputMonitor"},
        {"class_path": "maugpt.training.callbacks.RouterMonitor", "init_args": {"every_n_steps": 2}},
        {"class_path": "maugpt.training.callbacks.HypernetworkCores", "init_args": {"max_samples": 5}}]
    open(path, "w").write(yaml.safe_dump(config))
    run(["fit", "--config", path])
    log_dir = next((tmp_path / "tb" / "stage2").glob("version_*"))
    events = EventAccumulator(str(log_dir), size_guidance={"histograms": 0, "scalars": 0}).Reload()
    scalars = events.Tags()["scalars"]
    assert "train/tokens_per_s" in scalars and "adapters/router_entropy" in scalars
    layers = [t for t in scalars if t.startswith("router_entropy/")]
    assert len(layers) == 21  # 7 projections × the tiny LM's 3 decoder layers
    assert len(events.Scalars(layers[0])) == 2  # steps 0 and 2
    assert any(t.startswith("expert_load/") for t in events.Tags()["histograms"])
    projector = list(log_dir.glob("*/hypernetwork_cores*/metadata.tsv")) or list(log_dir.glob("**/metadata.tsv"))
    lines = projector[0].read_text().splitlines()
    assert lines[0] == "product\tdefect_class\tdomain" and len(lines) == 6
