"""Ablation sweeps (the paper's Table 6 and Fig. 5(a)): a spec expanded into one run folder per cell.

A spec (``experiments/*.yaml``) names base ``maugpt`` configs, a grid of overrides (dotted config
keys → values), constraints every cell must satisfy, and the metrics to collect. Each variant
(``tiny``, ``full``) has its own base configs and fixed overrides; the grid is shared::

    name: ablation_experts_rank
    variants:
      tiny: {base: [configs/tiny/stage2.yaml], overrides: {data.init_args.batches_per_epoch: 150}}
      full: {base: [configs/mau-gpt-4b/stage2.yaml]}
    grid:
      zip:                         # parallel lists: cell i takes the i-th value of each key
        model.init_args.adapter.init_args.experts: [1, 2, 4, 8, 16, 32, 64]
        model.init_args.adapter.init_args.rank: [64, 32, 16, 8, 4, 2, 1]
      product: {}                  # every combination with the zipped (or listed) cells
      cells: []                    # explicit cells: {name, label, <key>: <value>, …}
    label: "{experts}×{rank}"      # from the last component of each grid key
    constraints: ["model.init_args.adapter.init_args.experts * model.init_args.adapter.init_args.rank == 64"]
    metrics: [test/rougeL, test/bleu4]
    plot: {y: [test/rougeL, test/bleu4], xlabel: experts × rank}
    seeds: [0, 1, 2]               # optional: every cell once per seed (cells <cell>-seed<s>)
    reference: "16×4"              # optional: the cell the others are compared with (paired tests)
    pairs: [["8×8", "1×64"]]       # optional: more comparisons, [cell, against] (e.g. each at its best)

:func:`prepare` checks everything before any cell runs (constraints; every override key exists:
each cell's config is resolved by the CLI parser, which names an unknown key) and writes
``<sweep>/sweep.json`` and ``<sweep>/cells/<cell>/config.yaml``. :func:`run_cells` runs ``maugpt
fit`` then ``maugpt test`` per cell (through :mod:`maugpt.runner`: one runner per cell, signals
passed on); a cell with ``metrics.json`` is finished and skipped, a crashed or stopped one keeps
its log (``logs/attempt-N.log``) and is retried (resuming from its last checkpoint) on the next
run, a cell is tested only after its fit ended normally, and one crash never stops the others.
:func:`write_slurm` writes a SLURM array script doing the same per array task. All cells log under
``<sweep>/tensorboard``, one folder per cell, with their hyper-parameters for the HParams view.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import io
import itertools
import json
import operator
import re
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maugpt.runner import CellBusy, Runner, hold_cell


class SweepError(ValueError):
    """A spec that cannot run: raised before any cell starts."""


@dataclass
class Cell:
    name: str  # folder name
    label: str  # shown in tables and plots
    overrides: dict[str, Any]  # dotted config key → value
    group: str = ""  # with seeds: the cell all seeds belong to (its name without the seed)
    seed: int | None = None  # with seeds: this run's seed_everything


@dataclass
class SweepSpec:
    name: str
    variant: str
    base: list[str]
    cells: list[Cell]
    overrides: dict[str, Any] = field(default_factory=dict)  # the variant's, applied to every cell first
    constraints: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    plot: dict[str, Any] | None = None
    description: str = ""
    seeds: list[int] = field(default_factory=list)  # each cell runs once per seed
    reference: str | None = None  # the cell the others are compared with, question by question
    pairs: list[list[str]] = field(default_factory=list)  # further [cell, against] comparisons


# -- the spec ---------------------------------------------------------------------------------------
#: Fields that only shape the report: they may change on a folder with finished runs.
REPORT_FIELDS = ("metrics", "plot", "description", "reference", "pairs")
SPEC_FIELDS = {"name", "variants", "grid", "label", "constraints", "seeds", *REPORT_FIELDS}


def load_spec(path: str | Path, variant: str = "tiny") -> SweepSpec:
    """Read a sweep spec and expand its grid for ``variant``; bad fields raise naming them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep spec {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(raw) - SPEC_FIELDS)
    if unknown:
        raise SweepError(f"{path}: unknown field(s) {unknown}")
    variants = raw.get("variants") or {}
    if variant not in variants:
        raise SweepError(f"{path}: no variant {variant!r}; it has {sorted(variants)}")
    chosen = variants[variant]
    if not chosen.get("base"):
        raise SweepError(f"{path}: variant {variant!r} needs 'base': the maugpt config(s) every cell starts from")
    metrics = raw.get("metrics") or []
    if not metrics:
        raise SweepError(f"{path}: 'metrics' must list the metrics to collect (e.g. test/rougeL)")
    unplotted = [m for m in (raw.get("plot") or {}).get("y") or [] if m not in metrics]
    if unplotted:  # the plot draws collected metrics only
        raise SweepError(f"{path}: plot y {unplotted} are not among the metrics {metrics}")
    cells = expand_grid(raw.get("grid") or {}, raw.get("label"), path)
    known = {cell.name for cell in cells} | {cell.label for cell in cells}
    reference = raw.get("reference")
    if reference is not None and reference not in known:
        raise SweepError(f"{path}: reference {reference!r} is none of the cells {[cell.label for cell in cells]}")
    pairs = raw.get("pairs") or []
    for pair in pairs:
        if not isinstance(pair, list) or len(pair) != 2:
            raise SweepError(f"{path}: each of pairs must be [cell, against], got {pair!r}")
        unknown = [c for c in pair if c not in known]
        if unknown:
            raise SweepError(f"{path}: pairs name {unknown}, none of the cells {[cell.label for cell in cells]}")
    seeds = raw.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) < len(seeds):
        raise SweepError(f"{path}: seeds must be a list of distinct integers, got {seeds!r}")
    spec = SweepSpec(
        name=raw.get("name", path.stem),
        variant=variant,
        base=list(chosen["base"]),
        cells=with_seeds(cells, seeds),
        overrides=dict(chosen.get("overrides") or {}),
        constraints=list(raw.get("constraints") or []),
        metrics=list(metrics),
        plot=raw.get("plot"),
        description=raw.get("description", ""),
        seeds=list(seeds),
        reference=reference,
        pairs=[list(pair) for pair in pairs],
    )
    check_constraints(spec)
    return spec


def with_seeds(cells: list[Cell], seeds: list[int]) -> list[Cell]:
    """Each cell once per seed (``<cell>-seed<s>``, ``seed_everything: s``), seed by seed, so that a
    sweep cut short has every cell at its first seeds; without seeds, the cells as they are."""
    for cell in cells:
        cell.group = cell.name
    return (
        [
            Cell(f"{cell.name}-seed{seed}", cell.label, {**cell.overrides, "seed_everything": seed}, cell.name, seed)
            for seed in seeds
            for cell in cells
        ]
        if seeds
        else cells
    )


def expand_grid(grid: dict, label: str | None = None, where: Path | str = "spec") -> list[Cell]:
    """Cells of ``grid``: explicit ``cells`` (or one empty cell) × the ``zip`` rows × the ``product``."""
    unknown = sorted(set(grid) - {"cells", "zip", "product"})
    if unknown:
        raise SweepError(f"{where}: grid has unknown field(s) {unknown}; expected cells, zip, product")
    explicit = [dict(c) for c in grid.get("cells") or []] or [{}]
    zipped = grid.get("zip") or {}
    lengths = {k: len(v) for k, v in zipped.items()}
    if len(set(lengths.values())) > 1:
        raise SweepError(f"{where}: the zip lists differ in length: {lengths}")
    rows = [dict(zip(zipped, values)) for values in zip(*zipped.values())] if zipped else [{}]
    product = grid.get("product") or {}
    combos = [dict(zip(product, values)) for values in itertools.product(*product.values())]
    cells, names = [], set()
    for base, row, combo in itertools.product(explicit, rows, combos):
        values = {**base, **row, **combo}
        name, text = values.pop("name", None), values.pop("label", None)
        short = {key.rsplit(".", 1)[-1]: value for key, value in values.items()}
        extra = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in {**row, **combo}.items()) if base else ""
        if text is None and name is None:
            try:
                text = label.format(**short) if label else ", ".join(f"{k}={v}" for k, v in short.items())
            except KeyError as err:
                raise SweepError(
                    f"{where}: label {label!r} names {err}, which is not the last part of a grid key ({sorted(short)})"
                ) from None
        else:  # an explicit cell, crossed with the grid: say which of its copies this is
            text = (text or name) + (f" ({extra})" if extra else "")
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", (f"{name} {extra}" if name else text).replace("×", "x")).strip("_")
        if name in names:
            raise SweepError(f"{where}: two cells are both named {name!r}; give them distinct names or labels")
        names.add(name)
        cells.append(Cell(name, text, values))
    return cells


_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.USub: operator.neg,
}


def evaluate(expression: str, values: dict[str, Any]) -> Any:
    """A constraint such as ``a.b * c.d == 64`` over dotted config keys: arithmetic, comparisons,
    ``and``/``or``/``not`` and constants only (never Python's ``eval``)."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Name, ast.Attribute)):
            key = ast.unparse(node)
            if key not in values:
                raise SweepError(f"constraint {expression!r} names {key!r}, which no cell or override sets")
            return values[key]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
            return (not value(node.operand)) if isinstance(node.op, ast.Not) else -value(node.operand)
        if isinstance(node, ast.BoolOp):
            results = [value(v) for v in node.values]
            return all(results) if isinstance(node.op, ast.And) else any(results)
        if isinstance(node, ast.Compare) and all(type(op) in _OPS for op in node.ops):
            left, result = value(node.left), True
            for op, right_node in zip(node.ops, node.comparators):
                right = value(right_node)
                result, left = result and _OPS[type(op)](left, right), right
            return result
        raise SweepError(
            f"constraint {expression!r}: {ast.unparse(node)!r} is not allowed (arithmetic, "
            "comparisons and and/or/not over config keys only)"
        )

    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as err:
        raise SweepError(f"constraint {expression!r} is not an expression: {err.msg}") from None
    return value(tree.body)


def check_constraints(spec: SweepSpec) -> None:
    failing = list(
        dict.fromkeys(
            cell.label
            for cell in spec.cells
            for c in spec.constraints  # once per cell
            if not evaluate(c, {**spec.overrides, **cell.overrides})
        )
    )
    if failing:
        raise SweepError(f"sweep {spec.name}: cell(s) {failing} break the constraint(s) {spec.constraints}")


# -- cell folders -------------------------------------------------------------------------------------
def cli_args(overrides: dict[str, Any]) -> list[str]:
    """``--key value`` pairs for the CLI (values as JSON, which jsonargparse reads as YAML)."""
    return [
        arg
        for key, value in overrides.items()
        for arg in (f"--{key}", value if isinstance(value, str) else json.dumps(value))
    ]


def resolve_config(base: list[str], overrides: dict[str, Any]) -> dict:
    """The full ``maugpt fit`` config of ``base`` + ``overrides``, resolved by the CLI's parser
    without building anything (``--print_config``); an unknown key raises naming it."""
    from maugpt.training.cli import run

    args = ["fit", *[a for path in base for a in ("--config", path)], *cli_args(overrides), "--print_config"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run(args)
            code = 0
        except SystemExit as done:
            code = done.code or 0
    if code:
        text = err.getvalue()
        # jsonargparse's error block without the usage text: it names the key it rejects.
        lines = [
            line.strip()
            for line in text[text.find("error:") :].splitlines()
            if line.strip() and not line.strip().startswith(("Given value", "Subtypes", "- Expected a <class"))
        ]
        raise SweepError(f"the overrides {sorted(overrides)} do not fit {base}: {' '.join(lines) or code}")
    config = yaml.safe_load(out.getvalue())
    for key in overrides:  # argparse also takes unique prefixes of option names: insist on the full key
        check_key(config, key)
    return config


def check_key(config: dict, key: str) -> None:
    """Raise unless the dotted ``key`` names an entry of ``config``, suggesting the closest one."""
    node: Any = config
    for depth, part in enumerate(key.split(".")):
        if not isinstance(node, dict) or part not in node:
            here = ".".join(key.split(".")[:depth])
            near = difflib.get_close_matches(part, list(node) if isinstance(node, dict) else [], n=1)
            hint = f" (did you mean {'.'.join(filter(None, [here, near[0]]))!r}?)" if near else ""
            raise SweepError(f"the override key {key!r} does not exist in the config{hint}")
        node = node[part]


def place_cell(config: dict, cell: Cell, sweep_dir: Path) -> dict:
    """Point the config's outputs into the cell's folder and the sweep's TensorBoard root, and add
    the callback that writes the test metrics."""
    cell_dir = sweep_dir / "cells" / cell.name
    trainer = config["trainer"]
    trainer["default_root_dir"] = str(cell_dir)
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {
            "save_dir": str(sweep_dir / "tensorboard"),
            "name": cell.name,
            "version": "fit",
            "default_hp_metric": False,
        },
    }
    callbacks = [c for c in trainer.get("callbacks") or [] if not c["class_path"].endswith("MetricsJson")]
    for callback in callbacks:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback.setdefault("init_args", {})["dirpath"] = str(cell_dir / "checkpoints")
    callbacks.append(
        {
            "class_path": "maugpt.training.callbacks.MetricsJson",
            "init_args": {"path": str(cell_dir / "metrics.json"), "evaluation": str(cell_dir / "evaluation")},
        }
    )
    trainer["callbacks"] = callbacks
    return config


def check_growth(before: dict, after: dict, sweep_dir: Path, unchanged: set[str]) -> None:
    """A prepared folder takes its own spec again, or that spec grown by cells or seeds (the runs
    already there keep their meaning) or with other report fields (metrics, plot, description,
    reference, pairs: the report is made afresh from the runs); anything else is another sweep and
    refused. A run's meaning is its resolved config, so a cell, or the spec's base and overrides,
    restated without changing any prepared cell's config is taken (a default written out, to pin it
    against a later change of the base recipe); ``unchanged`` names the prepared cells whose config
    the new spec writes byte-identical."""
    refused = f"{sweep_dir} holds another sweep (its sweep.json differs"
    restated = {"base", "overrides"} if {cell["name"] for cell in before["cells"]} <= unchanged else set()
    fixed = set(before) - {"cells", "seeds", *REPORT_FIELDS, *restated}
    changed = sorted(key for key in fixed if before[key] != after.get(key))
    if not set(before.get("seeds", [])) <= set(after["seeds"]):  # a folder from before seeds: none
        changed.append("seeds")
    if changed:
        raise SweepError(f"{refused} in {', '.join(changed)}): use a new folder")
    now = {cell["name"]: cell for cell in after["cells"]}
    for cell in before["cells"]:
        if cell["name"] not in now:
            raise SweepError(f"{refused}: cell {cell['name']} is not in the spec): use a new folder")
        if now[cell["name"]] != cell and cell["name"] not in unchanged:
            raise SweepError(f"{refused}: cell {cell['name']} differs): use a new folder")


def prepare(spec: SweepSpec, sweep_dir: str | Path) -> Path:
    """Check the spec and write ``sweep.json`` and every cell's ``config.yaml`` (nothing runs).

    A folder prepared from another spec or with other configs is refused, never overwritten; the same
    spec grown by cells or seeds, or restated to the same configs, is taken (see :func:`check_growth`)."""
    sweep_dir = Path(sweep_dir)
    texts = {
        cell.name: yaml.safe_dump(
            place_cell(resolve_config(spec.base, {**spec.overrides, **cell.overrides}), cell, sweep_dir),
            sort_keys=False,
        )
        for cell in spec.cells
    }
    paths = {name: sweep_dir / "cells" / name / "config.yaml" for name in texts}
    existing = {name: path.read_text() for name, path in paths.items() if path.is_file()}
    record = {"spec": asdict(spec), "cells": [cell.name for cell in spec.cells]}
    written = sweep_dir / "sweep.json"
    if written.is_file():
        unchanged = {name for name, text in texts.items() if existing.get(name) == text}
        before, after = json.loads(written.read_text())["spec"], json.loads(json.dumps(record["spec"]))
        check_growth(before, after, sweep_dir, unchanged)
    for name, text in texts.items():
        if existing.get(name, text) != text:
            raise SweepError(f"{paths[name]} exists with another config: use a new sweep folder")
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        paths[name].write_text(text)
    written.write_text(json.dumps(record, indent=2))
    return sweep_dir


# -- running --------------------------------------------------------------------------------------------
def cell_commands(cell_dir: Path, python: str = sys.executable) -> list[tuple[str, list[str]]]:
    """``("fit", maugpt fit …)`` (resuming from the cell's last checkpoint when there is one;
    ``fit.json`` marks a fit that ended normally) then ``("test", maugpt test …)``."""
    config, last = str(cell_dir / "config.yaml"), cell_dir / "checkpoints" / "last.ckpt"
    finished = {
        "class_path": "maugpt.training.callbacks.FitFinished",
        "init_args": {"path": str(cell_dir / "fit.json")},
    }
    fit = [python, "-m", "maugpt.cli", "fit", "--config", config, f"--trainer.callbacks+={json.dumps(finished)}"]
    if last.is_file():
        fit += ["--ckpt_path", str(last)]
    test = [
        python,
        "-m",
        "maugpt.cli",
        "test",
        "--config",
        config,
        "--ckpt_path",
        str(last),
        "--trainer.logger.init_args.version",
        "test",
    ]
    return [("fit", fit), ("test", test)]


def run_cell(cell_dir: Path, runner: Runner | None = None, *, wait: bool = False) -> str:
    """Run one cell unless it is finished: ``done``, ``skipped`` (finished before), ``failed``,
    ``stopped`` (a signal; it resumes when run again) or ``busy`` (another runner holds it, see
    :func:`hold_cell`). The test runs only after a fit that ended normally (``fit.json``)."""
    runner = runner or Runner()
    try:
        with hold_cell(cell_dir, wait=wait, stopped=lambda: runner.stopped is not None) as lock:
            return run_held_cell(cell_dir, runner, lock) if lock is not None else "stopped"
    except CellBusy as busy:
        print(f"{cell_dir.name}: {busy}", file=sys.stderr, flush=True)
        return "busy"


def run_held_cell(cell_dir: Path, runner: Runner, lock: int) -> str:
    if (cell_dir / "metrics.json").is_file():
        return "skipped"
    logs = cell_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    attempt = 1 + sum(1 for _ in logs.glob("attempt-*.log"))
    (cell_dir / "fit.json").unlink(missing_ok=True)  # this attempt's fit must end normally itself
    with open(logs / f"attempt-{attempt}.log", "w") as log:
        for name, command in cell_commands(cell_dir):
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            status = runner.run(command, log, lock)
            if runner.stopped:
                log.write(f"stopped by {signal.Signals(runner.stopped).name}: the cell resumes when run again\n")
                return "stopped"
            if status != 0:
                return "failed"
            if name == "fit" and not (cell_dir / "fit.json").is_file():
                log.write("the fit exited 0 without finishing its steps (no fit.json): not tested\n")
                return "failed"
    return "done" if (cell_dir / "metrics.json").is_file() else "failed"


def prepared_cells(sweep_dir: Path) -> list[str]:
    """The cell folders :func:`prepare` recorded in ``sweep.json``, in spec order."""
    return json.loads((sweep_dir / "sweep.json").read_text())["cells"]


def run_cells(sweep_dir: str | Path, parallel: int = 1) -> dict[str, str]:
    """Run every prepared cell (``parallel`` at once); returns each cell's outcome (see
    :func:`run_cell`). A signal stops the running cells at their next step and starts no other."""
    sweep_dir = Path(sweep_dir)
    names = prepared_cells(sweep_dir)
    with Runner().handling_signals() as runner, ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        outcomes = list(pool.map(lambda name: run_cell(sweep_dir / "cells" / name, runner), names))
    return dict(zip(names, outcomes))


def write_slurm(
    sweep_dir: str | Path, partition: str | None = None, gpus: int = 1, hours: int = 24, python: str = "python"
) -> Path:
    """``<sweep>/slurm.sh``: a SLURM array with one task per cell, each running ``maugpt sweep-cell``
    (the cell's fit and test, as a local run does: skipped when finished, resumed from its last
    checkpoint, never run by two tasks at once) from the current folder (``sbatch`` it; submitting
    again resumes). A task near its time limit saves, requeues itself and resumes."""
    sweep_dir = Path(sweep_dir).resolve()
    names = prepared_cells(sweep_dir)
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={sweep_dir.name}",
        f"#SBATCH --array=0-{len(names) - 1}",
        f"#SBATCH --gpus-per-task={gpus}",
        f"#SBATCH --time={hours}:00:00",
        f"#SBATCH --output={sweep_dir}/cells/%a.slurm.log",
    ]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    # SIGUSR1 90 s before the time limit, to the batch shell (B:), which exec makes the runner:
    # the fit saves at its next step, the runner requeues the task, and the requeued task
    # resumes from last.ckpt and appends to its log.
    lines += [
        "#SBATCH --signal=B:USR1@90",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "set -euo pipefail",
        f'cd "{Path.cwd()}"  # the configs\' relative paths start here',
        "CELLS=(" + " ".join(names) + ")",
        'echo "cell ${CELLS[$SLURM_ARRAY_TASK_ID]}"',
        f'exec {python} -m maugpt.cli sweep-cell "{sweep_dir}" "$SLURM_ARRAY_TASK_ID"',
    ]
    path = sweep_dir / "slurm.sh"
    path.write_text("\n".join(lines) + "\n")
    return path
