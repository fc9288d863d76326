"""``fmrilm-bids`` entry point: parse, configure, check the input, then run the levels.

Bad input ends the run before anything is written to OUTPUT_DIR, with one line that names
the file and the fix, and a documented exit code (see :mod:`fmrilm_bids.errors`).

**The deliberate lazy imports of the package live here** (and in :mod:`bids_app.prepare`
and :mod:`fmrilm_bids.simulate.cli`, the other commands): the dataset checks, the workflows and
the stages are imported inside :func:`prepare_run`, :func:`run_participant_level` and
:func:`run_group_level`, after :func:`~fmrilm_bids.utils.environment.configure_environment`
has pointed the caches. pybids, nipype, niworkflows, templateflow, matplotlib, torch and
transformers read those variables once, when they are imported, and importing them costs
seconds that ``--help``, ``--version`` and a refused input should not pay. Every other
module imports at module level.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bids_app.parser import build_parser
from fmrilm_bids import __version__
from fmrilm_bids.config import Config, check_schema, read_config_file
from fmrilm_bids.errors import (
    EXIT_NO_INPUT,
    EXIT_OK,
    EXIT_SOFTWARE,
    FmrilmError,
    InputDataError,
    OutputCheckError,
)
from fmrilm_bids.reports.citation import (
    RunFacts,
    group_paragraphs,
    participant_paragraphs,
    write_citation,
)
from fmrilm_bids.utils.environment import configure_environment
from fmrilm_bids.utils.files import atomic_write_text
from fmrilm_bids.utils.launch import launched_process
from fmrilm_bids.utils.locks import acquire_run_locks, release_run_locks
from fmrilm_bids.utils.versions import SOFTWARE, software_versions

if TYPE_CHECKING:
    from fmrilm_bids.dataset.layout import Selection

LOGGER = logging.getLogger(__name__)
#: The packages whose loggers the command line configures (every module logs to
#: ``logging.getLogger(__name__)``, so these two roots hold them all).
APP_LOGGERS = ("fmrilm_bids", "bids_app")

#: Command-line destinations and the config section each belongs to.
OPTION_SECTIONS = {
    "execution": ("participant_label", "session_label", "task_id", "skip_bids_validation", "strict",
                  "stop_on_first_crash", "clean_workdir", "verbosity", "cache_dir", "work_dir"),
    "nipype": ("nprocs", "omp_nthreads", "mem_mb"),
    "workflow": ("atlases", "output_spaces", "denoise_strategy", "high_pass", "fd_threshold",
                 "scrub", "dummy_scans", "output_bold", "sloppy", "ignore", "model_dir",
                 "llm_dir", "device", "precision",
                 "tokenizer_steps", "lm_steps", "lm_epochs", "fmri_inputs",
                 "gradient_checkpointing",
                 "reference_group", "networks", "questions", "zero_shot", "few_shot_k",
                 "stimulus_models", "stimulus_unit", "caption_column", "stim_captions",
                 "stimulus_features", "encoding_cv", "encoding_folds", "decoding_folds",
                 "adapter_folds", "contrastive_alignment", "selectivity_top"),
}
#: Packages the group level's citation boilerplate adds to the preprocessing ones.
MODEL_SOFTWARE = ("torch", "transformers", "peft", "sentence-transformers")
#: Keys of a config file that the command line always decides.
RUN_SPECIFIC_KEYS = ("bids_dir", "output_dir", "analysis_level", "run_uuid", "version")


def _load_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise InputDataError(f"{path}: no such {what}; check the path.") from err
    except json.JSONDecodeError as err:
        raise InputDataError(f"{path}: the {what} is not valid JSON ({err}); fix it.") from err


def _load_plugin(path: Path) -> dict[str, Any]:
    try:
        settings = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as err:
        raise InputDataError(f"{path}: no such plugin file; check --use-plugin.") from err
    except yaml.YAMLError as err:
        raise InputDataError(f"{path}: not valid YAML ({err}); fix the plugin file.") from err
    if not isinstance(settings, dict) or "plugin" not in settings:
        raise InputDataError(
            f"{path}: a plugin file needs a 'plugin' key (e.g. 'plugin: SLURM') and optional "
            "'plugin_args'."
        )
    return {"plugin": settings["plugin"], "plugin_args": settings.get("plugin_args") or {}}


def build_config(opts: argparse.Namespace, parser: argparse.ArgumentParser) -> Config:
    """Layer dataclass defaults, ``--config-file`` and the typed flags into a :class:`Config`.

    Usage mistakes (output dir equal to the input, work dir inside it) exit through
    ``parser.error`` (exit code 2).
    """
    layered: dict[str, dict[str, Any]] = {"execution": {}, "nipype": {}, "workflow": {},
                                          "seeds": {}}
    if getattr(opts, "config_file", None):
        try:
            from_file = read_config_file(opts.config_file)
        except FileNotFoundError as err:
            raise InputDataError(f"{opts.config_file}: no such config file.") from err
        except ValueError as err:
            raise InputDataError(f"{opts.config_file}: not valid TOML ({err}); fix it.") from err
        try:
            check_schema(from_file)
        except ValueError as err:
            raise InputDataError(f"{opts.config_file}: {err}; fix the config file.") from err
        for section, values in from_file.items():
            layered[section].update(
                {k: v for k, v in values.items() if k not in RUN_SPECIFIC_KEYS}
            )
    given = vars(opts)
    for section, keys in OPTION_SECTIONS.items():
        layered[section].update({k: given[k] for k in keys if k in given})
    if "seed" in given:
        layered["seeds"]["master"] = given["seed"]
    if "derivatives" in given:
        layered["execution"]["derivatives"] = {
            name: str(path.absolute()) for name, path in given["derivatives"]
        }
    if "bids_database_dir" in given:
        layered["execution"]["bids_database_dir"] = str(given["bids_database_dir"].absolute())
    if "bids_filter_file" in given:
        from fmrilm_bids.dataset.layout import check_bids_filters

        filters = _load_json(given["bids_filter_file"], "BIDS filter file")
        try:
            check_bids_filters(filters)
        except ValueError as err:
            raise InputDataError(f"{given['bids_filter_file']}: {err}.") from err
        layered["execution"]["bids_filters"] = filters
    if "use_plugin" in given:
        layered["nipype"].update(_load_plugin(given["use_plugin"]))

    bids_dir = opts.bids_dir.absolute()
    output_dir = opts.output_dir.absolute()
    work_dir = Path(layered["execution"].pop("work_dir", Path.cwd() / "work")).absolute()
    if output_dir == bids_dir:
        parser.error(
            "OUTPUT_DIR is the input BIDS folder; write derivatives elsewhere, e.g. "
            f"{bids_dir / 'derivatives' / 'fmrilm'}"
        )
    if work_dir == bids_dir or bids_dir in work_dir.parents:
        parser.error(
            f"the work dir {work_dir} is inside the BIDS folder; choose one outside it "
            "with -w/--work-dir"
        )
    workflow = layered["workflow"]
    if len(workflow.get("output_spaces", [])) > 1 and not workflow.get("output_bold"):
        parser.error(f"--output-spaces {' '.join(workflow['output_spaces'])}: the spaces after "
                     "the first are only written as preprocessed BOLD; add --output-bold, or "
                     "give one space")
    cpus = len(os.sched_getaffinity(0))
    nipype = layered["nipype"]
    nipype.setdefault("nprocs", cpus)
    nipype.setdefault("omp_nthreads", max(1, min(8, nipype["nprocs"] - 1)))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    layered["execution"].update(
        bids_dir=str(bids_dir), output_dir=str(output_dir), work_dir=str(work_dir),
        analysis_level=opts.analysis_level, run_uuid=f"{stamp}_{uuid.uuid4().hex[:8]}",
        version=__version__,
    )
    try:
        return Config.from_dict(layered)
    except (TypeError, ValueError) as err:
        source = getattr(opts, "config_file", "the options")
        raise InputDataError(f"{source}: {err}; fix the setting.") from err


def _setup_logging(verbosity: int) -> None:
    """Log to stderr: INFO (-v too), DEBUG from -vv; -1 for warnings only."""
    level = {-1: logging.WARNING, 0: logging.INFO, 1: logging.INFO}.get(verbosity,
                                                                       logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s",
                                           "%H:%M:%S"))
    for name in APP_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
    for noisy in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbosity > 1 else logging.WARNING)


def _add_log_file(log_dir: Path) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_dir / "fmrilm-bids.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    for name in APP_LOGGERS:
        logging.getLogger(name).addHandler(handler)


def prepare_run(config: Config) -> Selection:
    """Everything before the work: environment, input checks, selection, output skeleton.

    Returns
    -------
    fmrilm_bids.dataset.layout.Selection
        The BOLD runs to process.
    """
    execution = config.execution
    if execution.clean_workdir and execution.work_dir.exists():
        LOGGER.info("Emptying the work dir %s (--clean-workdir)", execution.work_dir)
        shutil.rmtree(execution.work_dir)
    cache = configure_environment(work_dir=execution.work_dir, cache_dir=execution.cache_dir)
    execution.cache_dir = cache

    from fmrilm_bids.dataset import checks
    from fmrilm_bids.dataset.derivatives import write_derivatives_skeleton
    from fmrilm_bids.dataset.layout import index_dataset, reuse_index, select_runs
    from fmrilm_bids.resources.templates import check_spaces

    checks.check_bids_root(execution.bids_dir)
    checks.check_output_dir(execution.output_dir)
    if execution.skip_bids_validation:
        LOGGER.info("Skipping the BIDS validator (--skip-bids-validation)")
    else:
        LOGGER.info("Validating %s with bids-validator-deno", execution.bids_dir)
        checks.run_bids_validator(execution.bids_dir)
    for name, path in execution.derivatives.items():
        if not path.is_dir():
            raise InputDataError(f"{path}: the '{name}' derivatives folder does not exist; "
                                 "check --derivatives.")
    if execution.bids_database_dir:
        LOGGER.info("pybids index: %s (--bids-database-dir)", execution.bids_database_dir)
        layout = reuse_index(execution.bids_dir, execution.bids_database_dir)
    else:
        layout = index_dataset(execution.bids_dir, execution.bids_cache_dir)
    own_preprocessing = (execution.analysis_level == "participant"
                         and "fmriprep" not in execution.derivatives)
    if own_preprocessing and "fieldmaps" in config.workflow.ignore:
        LOGGER.info("Field maps are not used (--ignore fieldmaps): no susceptibility "
                    "distortion correction")
    selection = select_runs(layout, execution.participant_label, execution.session_label,
                            execution.task_id, execution.bids_filters,
                            fieldmaps=own_preprocessing
                            and "fieldmaps" not in config.workflow.ignore)
    LOGGER.info("%s", selection.summary())
    selection = checks.check_selection(
        selection, require_t1w="fmriprep" not in execution.derivatives,
        bids_dir=execution.bids_dir, strict=execution.strict,
        fmriprep_dir=execution.derivatives.get("fmriprep"))
    for line in selection.refused:
        LOGGER.warning("Left out: %s", line)
    if launched_process().is_main:  # one run at a time per participant (or group) and work dir
        acquire_run_locks(execution.work_dir, ["group"] if execution.analysis_level == "group"
                          else [f"sub-{s.subject}" for s in selection.subjects])
    if execution.analysis_level == "participant" and "fmriprep" not in execution.derivatives:
        check_spaces(config.workflow.spaces)
    if config.workflow.model_dir and execution.analysis_level == "participant":
        from fmrilm_bids.stages.participant import load_model

        load_model(config.workflow.model_dir)
    if execution.analysis_level == "group":
        from fmrilm_bids.stages.inputs import atlas_name, check_participant_outputs

        check_participant_outputs(selection, execution.output_dir,
                                  atlas_name(config.workflow.atlases[0]))

    if not launched_process().is_main:  # one of several group processes: rank 0 writes
        return selection
    write_derivatives_skeleton(execution.output_dir, execution.bids_dir, execution.derivatives)
    _add_log_file(execution.log_dir)
    atomic_write_text(execution.log_dir / "config.toml", config.to_toml())
    LOGGER.info("Settings saved to %s", execution.log_dir / "config.toml")
    return selection


def _versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Installed versions for the boilerplate, with this package's own ``__version__``."""
    return software_versions(packages) | {"fmrilm-bids": __version__}


def run_participant_level(selection: Selection, config: Config) -> None:
    """Preprocess, denoise and parcellate every selected run (one nipype workflow); with
    ``--model``, then apply the trained fMRI-LM model to those runs."""
    from bids_app.execution import run_workflow
    from fmrilm_bids.preproc.denoise import get_strategy
    from fmrilm_bids.stages.participant import apply_model
    from fmrilm_bids.workflows.base import init_fmrilm_wf
    from fmrilm_bids.workflows.bold import sdc_counts, slice_timing_inputs

    run_workflow(init_fmrilm_wf(selection, config), config)
    if config.workflow.model_dir:
        apply_model(selection, config)
    runs = selection.bold_runs
    use_fmriprep = "fmriprep" in config.execution.derivatives
    facts = RunFacts(participants=len(selection.subjects), runs=len(runs),
                     slice_timed=0 if use_fmriprep else sum(
                         slice_timing_inputs(run, config) is not None for run in runs),
                     denoising=get_strategy(config.workflow.denoise_strategy).description,
                     sdc=sdc_counts(runs))
    written = write_citation(config.execution.output_dir / "logs",
                             participant_paragraphs(config, facts, _versions(SOFTWARE)))
    LOGGER.info("Methods boilerplate: %s", ", ".join(str(p) for p in written))


def run_group_level(selection: Selection, config: Config) -> None:
    """Train fMRI-LM on the participants' outputs and write every run's model outputs."""
    from fmrilm_bids.preproc.denoise import get_strategy
    from fmrilm_bids.stages.bundle import STAGE1_FILE
    from fmrilm_bids.stages.group import run_group_level as train_and_apply

    model_dir = train_and_apply(selection, config)
    if not launched_process().is_main:
        return
    stage1 = json.loads((model_dir / STAGE1_FILE).read_text())
    facts = RunFacts(participants=len(selection.subjects), runs=len(selection.bold_runs),
                     slice_timed=0,
                     denoising=get_strategy(config.workflow.denoise_strategy).description,
                     tokenizer_training=stage1["Training"])
    versions = _versions((*SOFTWARE, *MODEL_SOFTWARE))
    written = write_citation(config.execution.output_dir / "logs",
                             group_paragraphs(config, facts, versions), stem="CITATION_group")
    LOGGER.info("Methods boilerplate: %s", ", ".join(str(p) for p in written))


def check_own_outputs(selection: Any, config: Config) -> None:
    """Check the outputs the validator cannot (:mod:`fmrilm_bids.dataset.output_checks`).

    Raises
    ------
    OutputCheckError
        Naming the first problem; every problem is logged.
    """
    from fmrilm_bids.dataset.output_checks import check_outputs

    folders = [f"sub-{subject.subject}" for subject in selection.subjects]
    if config.execution.analysis_level == "group":
        folders.append("group")
    problems = check_outputs(config.execution.output_dir, folders=folders)
    for problem in problems:
        LOGGER.error("Output check: %s", problem)
    if problems:
        raise OutputCheckError(
            f"{problems[0]} ({len(problems)} problem(s) in the outputs, all in the log); "
            "please report it with the output of -vv")
    LOGGER.info("Outputs checked (TSV columns, n/a, rows per run, sidecar keys) in %s",
                ", ".join(folders))


def main(argv: list[str] | None = None) -> int:
    """Run ``fmrilm-bids``; returns the exit code (see the README)."""
    parser = build_parser()
    opts = parser.parse_args(argv)
    launched = launched_process()
    if launched.world_size > 1 and opts.analysis_level != "group":
        parser.error(f"{launched.world_size} processes were launched (torchrun / accelerate); "
                     "only the group level trains in parallel: run the participant level as "
                     "one process (it uses --nprocs cores)")
    # The other processes of a parallel group run log their warnings only.
    _setup_logging(getattr(opts, "verbosity", 0) if launched.is_main else -1)
    selection = None
    try:
        config = build_config(opts, parser)
        selection = prepare_run(config)
        if config.execution.analysis_level == "participant":
            run_participant_level(selection, config)
        else:
            run_group_level(selection, config)
        if launched.is_main:
            check_own_outputs(selection, config)
    except FmrilmError as err:
        for line in getattr(selection, "refused", ()):
            print(f"fmrilm-bids: error: {line}", file=sys.stderr)
        print(f"fmrilm-bids: error: {err}", file=sys.stderr)
        return err.exit_code
    except Exception as err:  # a bug: say so, keep the traceback for the report
        LOGGER.debug("Internal error", exc_info=True)
        print(f"fmrilm-bids: internal error: {type(err).__name__}: {err} (please report it "
              "with the output of -vv)", file=sys.stderr)
        return EXIT_SOFTWARE
    finally:
        release_run_locks()
    LOGGER.info("%s level done: derivatives in %s", config.execution.analysis_level,
                config.execution.output_dir)
    if selection.refused:  # the participants that could not be processed, one line each
        for line in selection.refused:
            print(f"fmrilm-bids: error: {line}", file=sys.stderr)
        return EXIT_NO_INPUT
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
