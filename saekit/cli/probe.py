"""The ``probe`` subcommand: SAEBench's sparse probing of a run's dictionary on a labelled task, and with
``--scr``, ``--tpp`` or ``--structure`` SAEBench's SCR, TPP, or MDL and meta-structure evaluations."""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.cli.argtypes import DEFAULTS_NOTE
from saekit.errors import SaekitError
from saekit.settings import add_flags, from_args

TASK_HELP = ("a built-in task (language, code, fortune-topic, bible-testament, python-docs: built from Debian "
             "packages, no download), a .csv/.jsonl file with text and label columns, one of SAEBench's datasets "
             "by name (LabHC/bias_in_bios_class_set1, fancyzhx/ag_news, ...) or hf:NAME (text and label columns) "
             "or hf:DIRECTORY of data files, read from the Hugging Face cache only (never downloaded); with --scr "
             "a built-in biased mix (topic-language, the default); not read by --structure")
MODES = ("scr", "tpp", "structure")


def add_probe_parsers(subparsers: argparse._SubParsersAction) -> None:
    from saekit.probing.scr_tpp import RemovalSettings
    from saekit.probing.sparse_probing import ProbeSettings
    from saekit.probing.structure import StructureSettings

    probe = subparsers.add_parser(
        "probe", help="sparse probing (SAEBench): how well k latents classify a labelled task; SCR, TPP, MDL",
        description="For each class of the task against the rest, the k latents with the largest mean difference "
                    "(mean over each text's non-BOS tokens) and a logistic regression on them, as SAEBench's "
                    "sparse_probing; beside the same probe on the raw activations at the run's site, one on all "
                    "of them, and one on a random dictionary of the same shape. Writes probing.json, probing.md "
                    "and sparse_probing_saebench.json (SAEBench's result layout) into --out. --scr and --tpp run "
                    "SAEBench's spurious correlation removal and targeted probe perturbation instead (scr/tpp.json, "
                    ".md, _saebench.json, with the reliability study's warning); --structure runs MDL and the "
                    "meta-structure (a BatchTopK meta-dictionary on the decoder rows) into structure.json, .md, "
                    "mdl_saebench.json and meta_structure_saebench.json.")
    probe.add_argument("run", metavar="RUN", help="a run directory (a single-site SAE or transcoder)")
    probe.add_argument("--task", default=None, metavar="NAME_OR_FILE", help=TASK_HELP)
    modes = probe.add_mutually_exclusive_group()
    modes.add_argument("--scr", action="store_true", help="SCR on a biased mix (SAEBench's definition)")
    modes.add_argument("--tpp", action="store_true", help="TPP on the task's classes (SAEBench's definition)")
    modes.add_argument("--structure", action="store_true", help="MDL and meta-structure (SAEBench's definitions)")
    probe.add_argument("--out", type=Path, default=None,
                       help="output directory (default: RUN/probing/TASK, RUN/probing/scr-TASK, tpp-TASK or "
                            "structure; must not be or hold the run's files)")
    add_flags(probe, ProbeSettings, title="probe settings (defaults in [])", note=DEFAULTS_NOTE)
    add_flags(probe, RemovalSettings, title="SCR and TPP settings (defaults in [])", note=DEFAULTS_NOTE)
    add_flags(probe, StructureSettings, title="structure settings (defaults in [])", note=DEFAULTS_NOTE,
              skip=("batch_size", "seed"))
    probe.set_defaults(handler=_probe)


def _mode(args: argparse.Namespace) -> str:
    return next((mode for mode in MODES if getattr(args, mode)), "sparse")


def _task(args: argparse.Namespace, mode: str) -> str:
    from saekit.probing.scr_tpp import DEFAULT_SCR_TASK

    if mode == "scr":
        return args.task or DEFAULT_SCR_TASK
    if mode == "structure":
        return ""
    if args.task is None:
        raise SaekitError(f"saekit probe{' --tpp' if mode == 'tpp' else ''} needs --task NAME_OR_FILE")
    return args.task


def _out_dir(run: Path, task: str, out: Path | None, mode: str = "sparse") -> Path:
    if out is not None:
        return out
    name = {"sparse": Path(task).stem, "scr": f"scr-{task}", "tpp": f"tpp-{Path(task).stem}"}.get(mode, "structure")
    return run / "probing" / name


def _probe(args: argparse.Namespace) -> int:
    from saekit.io import OutputTarget, claim_output, mark_output

    _check_settings(args)  # a value out of range names its flag, whatever the mode
    mode = _mode(args)
    _check_split_flags(args, mode)
    task = _task(args, mode)
    run = Path(args.run)
    out = _out_dir(run, task, args.out, mode)
    inputs = (run / "dictionary", run / "config.json") + _task_paths(task)
    target = OutputTarget(out, "probe", inputs=inputs)
    target.check()  # a bad --out is one line before any work
    results, write, summary = _evaluate(mode, run, task, args)  # every bad input fails here, before any write
    with claim_output(target) as path:
        mark_output(target)
        write(path, results)
    print(f"{summary}; report: {out / _report_file(mode)}")
    return 0


def _check_split_flags(args: argparse.Namespace, mode: str) -> None:
    """sae-probes' split settings change sparse probing's one-vs-rest splits only; elsewhere they would be silently
    ignored, so they are refused."""
    from saekit.probing.sparse_probing import ProbeSettings, split_setting

    settings = from_args(ProbeSettings, args)
    if mode != "sparse" and (split_setting(settings) != "balanced" or settings.test_positive_fraction is not None):
        raise SaekitError(f"--train-size, --positive-fraction and --test-positive-fraction apply to sparse probing, "
                          f"not --{mode}; leave them out")


def _task_paths(task: str) -> tuple[Path, ...]:
    """The files a task reads (the output may not be or hold them): a labelled file, or an hf: directory."""
    if task.startswith("hf:") and Path(task[3:]).exists():
        return (Path(task[3:]),)
    return (Path(task),) if task and Path(task).is_file() else ()


def _check_settings(args: argparse.Namespace) -> None:
    from saekit.probing.scr_tpp import RemovalSettings
    from saekit.probing.sparse_probing import ProbeSettings
    from saekit.probing.structure import StructureSettings

    for cls in (ProbeSettings, RemovalSettings, StructureSettings):
        from_args(cls, args).validate()


def _report_file(mode: str) -> str:
    from saekit.probing.output import REPORT_FILE
    from saekit.probing.output_removal import REPORT_FILES

    return REPORT_FILE if mode == "sparse" else REPORT_FILES[mode]


def _evaluate(mode: str, run: Path, task: str, args: argparse.Namespace) -> tuple[object, object, str]:
    """(results, their writer, a one-line summary) of the chosen evaluation; nothing is written here."""
    from saekit.probing.sparse_probing import ProbeSettings

    if mode == "structure":
        return _structure(run, args)
    settings = from_args(ProbeSettings, args).validate()
    if mode == "sparse":
        return _sparse(run, task, settings)
    from saekit.probing.output_removal import write_removal
    from saekit.probing.scr_tpp import RemovalSettings, scr_run, tpp_run

    removal = from_args(RemovalSettings, args).validate()
    results = (scr_run if mode == "scr" else tpp_run)(run, task, settings, removal)
    n = results.settings["n_values"][min(2, len(results.settings["n_values"]) - 1)]
    key = f"scr_metric_threshold_{n}" if mode == "scr" else f"tpp_threshold_{n}_total_metric"
    value = results.metrics[key]
    shown = "n/a" if value is None else f"{value:.3f}"
    return results, write_removal, (f"{mode.upper()} on {results.task['name']}: N={n} {shown} (unreliable by "
                                    "Chanin 2026; see the report)")


def _sparse(run: Path, task: str, settings: object) -> tuple[object, object, str]:
    from saekit.probing.output import write_probing
    from saekit.probing.sparse_probing import probe_run

    results = probe_run(run, task, settings)  # type: ignore[arg-type]
    sae = results.mean["sae"]
    summary = ", ".join(f"k={k} {sae[k]['accuracy']:.3f} (AUC {sae[k]['auc']:.3f})" for k in sae)
    setting = results.split.get("setting", "balanced")
    return results, write_probing, (f"sparse probing on {results.task['name']}: dictionary {summary}; all raw "
                                    f"activations {results.llm_all['accuracy']:.3f} (AUC {results.llm_all['auc']:.3f});"
                                    f" {setting} split")


def _structure(run: Path, args: argparse.Namespace) -> tuple[object, object, str]:
    from saekit.probing.output_removal import write_structure
    from saekit.probing.sparse_probing import ProbeSettings
    from saekit.probing.structure import StructureSettings, structure_run

    probe_settings = from_args(ProbeSettings, args).validate()
    settings = from_args(StructureSettings, args)
    settings.seed, settings.batch_size = probe_settings.seed, probe_settings.batch_size
    results = structure_run(run, settings.validate())
    return results, write_structure, (f"MDL {results.mdl_chosen['description_length']:.2f} bits per token "
                                      f"({results.mdl_chosen['num_bins']} bins); meta-structure FVE "
                                      f"{results.meta['decoder_fraction_variance_explained']:.3f}")
