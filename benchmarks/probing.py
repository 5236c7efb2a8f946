"""Sparse probing on the default model, every built-in task: a trained dictionary against its controls, one run.

For a run directory (the quickstart's, by default ``runs/quickstart``) this probes, with SAEBench's sparse
probing (``saekit probe``'s code, the same texts and negatives for every feature set), on each built-in
labelled task (``saekit.data.labelled.TASKS``, from Debian packages, no download):

- the run's dictionary (``sae``);
- the randomized-weights control (Heap et al. 2025): the same recipe trained on the model with re-initialised
  weights (``saekit control``'s twin, trained here if the run has none yet), probed on that randomized model's
  own activations, beside the randomized model's raw activations: what a dictionary finds in a model that
  learned nothing (token identity and position survive random weights, so some tasks stay easy);
- a random dictionary of the run's shape (``random``) and the raw activations at the site, top-k by the same
  mean-difference rule (``llm``), as every ``saekit probe`` report shows; and a probe on all raw activations.

Mean test accuracy (and AUC) over each task's one-vs-rest classes, at k = 1, 2, 5. Writes
``benchmarks/results/probing-<date>.json`` and ``.md`` (``--out`` to choose) and prints the table.
Run: ``.venv/bin/python benchmarks/probing.py [RUN] [--tasks language,code]``.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

from bench_common import cpu_name

from saekit.io import write_json, write_text
from saekit.jobs.control import ControlConfig, control_train_config, train_control
from saekit.probing.sparse_probing import ProbeSettings, probe_run
from saekit.render import markdown_table
from saekit.training.config import load_run_config

SETS = {"sae": "run's dictionary", "random": "random dictionary", "llm": "raw activations, top-k",
        "control": "randomized model: its dictionary", "control_llm": "randomized model: raw, top-k"}


def probe_task(run: Path, control: Path, task: str, settings: ProbeSettings, loaded, randomized) -> dict:
    """One task's mean accuracy and AUC per feature set and k (the control's rows from its own model)."""
    started = time.perf_counter()
    real = probe_run(run, task, settings, loaded=loaded)
    twin = probe_run(control, task, settings, loaded=randomized)
    table = {name: real.mean[name] for name in ("sae", "random", "llm")}
    table.update(control=twin.mean["sae"], control_llm=twin.mean["llm"])
    return {"task": real.task, "site": real.site, "mean": table, "all_raw": real.llm_all,
            "control_all_raw": twin.llm_all, "seconds": time.perf_counter() - started}


def markdown(rows: list[dict], header: dict) -> str:
    ks = [str(k) for k in header["k"]]
    lines = [f"# Sparse probing on the default model, every built-in task ({header['date']})", "",
             f"Machine: {header['cpu']}. Run `{header['run']}` ({rows[0]['site']}); control `{header['control']}`. "
             "Mean test accuracy over each task's one-vs-rest classes (SAEBench's sparse probing, k latents chosen "
             "by mean difference on the training split, logistic regression); AUC in the JSON.", "",
             f"Command: `{header['command']}`", ""]
    table_rows = []
    for row in rows:
        task = row["task"]
        for name, label in SETS.items():
            table_rows.append([task["name"] if name == "sae" else "", label,
                               *[f"{row['mean'][name][k]['accuracy']:.3f}" for k in ks],
                               f"{row['all_raw']['accuracy']:.3f}" if name == "sae" else ""])
    lines += [markdown_table(["task", "features", *[f"k={k}" for k in ks], "all raw"], table_rows), ""]
    sizes = "; ".join(f"{r['task']['name']}: {len(r['task']['classes'])} classes, {r['task']['train_per_class']} "
                      f"train / {r['task']['test_per_class']} test per class" for r in rows)
    lines += [f"Sizes: {sizes}.", ""]
    return "\n".join(lines)


def main() -> None:
    from saekit.data.labelled import TASKS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--train-per-class", type=int, default=None, help="training texts per class (default: the "
                        "task's stated size)")
    parser.add_argument("--test-per-class", type=int, default=None, help="test texts per class (default: the task's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown tasks {unknown}; choose from {sorted(TASKS)}")
    config = load_run_config(args.run)
    loaded = config.data.load_model(config.run.device)
    control_config = ControlConfig()
    twin = control_train_config(config, control_config.suffix, control_config.randomization_seed)
    randomized = twin.data.load_model(config.run.device)
    control = train_control(args.run, control_config, randomized)
    settings = ProbeSettings(train_per_class=args.train_per_class, test_per_class=args.test_per_class)
    date = datetime.date.today().isoformat()
    header = {"date": date, "cpu": cpu_name(), "run": str(args.run), "control": str(control),
              "k": list(settings.k),
              "command": f"python benchmarks/probing.py {args.run} --tasks {args.tasks}"
                         + (f" --train-per-class {args.train_per_class}" if args.train_per_class else "")
                         + (f" --test-per-class {args.test_per_class}" if args.test_per_class else "")}
    out = args.out or Path(__file__).parent / "results" / f"probing-{date}"
    rows = []
    for task in tasks:  # written after every task: a run stopped part way keeps the tasks it finished
        rows.append(probe_task(args.run, control, task, settings, loaded, randomized))
        write_json(out.with_suffix(".json"), {**header, "rows": rows})
        write_text(out.with_suffix(".md"), markdown(rows, header))
        print(markdown(rows, header))
    print(f"written {out}.json and .md")


if __name__ == "__main__":
    main()
