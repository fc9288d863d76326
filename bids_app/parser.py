"""Command-line parser of ``fmrilm-bids``, with the flags BIDS-App users know from fMRIPrep.

Every option defaults to *not given* (``argparse.SUPPRESS``), so that the configuration is
layered cleanly: dataclass defaults, then ``--config-file``, then the flags actually typed.
Each option accepts both dash and underscore spellings (``--participant-label`` and
``--participant_label``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fmrilm_bids import __version__
from fmrilm_bids.config import ANALYSIS_LEVELS, DEFAULT_SPACE, DEVICES, IGNORE_CHOICES, Space


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _spellings(flag: str) -> list[str]:
    """``--participant-label`` -> ``["--participant-label", "--participant_label"]``."""
    names = [flag]
    if "-" in flag[2:]:
        names.append("--" + flag[2:].replace("-", "_"))
    return names


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value}")
    return number


def _output_space(value: str) -> str:
    """``TEMPLATE[:res-N][:cohort-C]`` (fMRIPrep's grammar), written back in full."""
    try:
        return Space.parse(value).label
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _derivative(value: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named after its folder)."""
    name, _, path = value.rpartition("=")
    path_obj = Path(path)
    return (name or path_obj.name), path_obj


def build_parser() -> argparse.ArgumentParser:
    """The ``fmrilm-bids`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="fmrilm-bids",
        description="fmrilm-bids: turn BIDS fMRI into parcel time series, fMRI tokens, text "
        "captions and embeddings (fMRI-LM). Exit codes: 0 success, 1 a processing step "
        "failed, 2 usage error, 65 bad input data, 66 missing input, 70 internal error, "
        "73 output not writable.",
        formatter_class=_Formatter,
        argument_default=argparse.SUPPRESS,
    )

    def add(group: argparse._ArgumentGroup, flag: str, *short: str, **kwargs: object) -> None:
        group.add_argument(*short, *_spellings(flag), **kwargs)

    parser.add_argument("bids_dir", type=Path, help="root of the input BIDS dataset")
    parser.add_argument("output_dir", type=Path,
                        help="derivatives folder to write (e.g. BIDS_DIR/derivatives/fmrilm)")
    parser.add_argument("analysis_level", choices=ANALYSIS_LEVELS,
                        help="'participant': preprocess and apply models to each participant; "
                        "'group': train/evaluate on all selected participants")
    parser.add_argument("--version", action="version", version=f"fmrilm-bids v{__version__}")

    select = parser.add_argument_group("Selecting data")
    add(select, "--participant-label", nargs="+", metavar="LABEL",
        help="participants to process, with or without 'sub-' (default: all)")
    add(select, "--session-label", nargs="+", metavar="LABEL",
        help="sessions to process, with or without 'ses-' (default: all)")
    add(select, "--task-id", nargs="+", metavar="TASK", help="tasks to process (default: all)")
    add(select, "--bids-filter-file", type=Path, metavar="FILE",
        help='JSON of pybids queries per kind of file, e.g. {"bold": {"acquisition": "mb4"}}')
    add(select, "--derivatives", nargs="+", type=_derivative, metavar="[NAME=]PATH",
        help="existing derivatives to use, e.g. fmriprep=/data/derivatives/fmriprep")
    add(select, "--bids-database-dir", type=Path, metavar="DIR",
        help="a pybids index to reuse as it is (built there by the first run when absent or "
        "empty; empty it after changing the dataset); default: an index cached in the work "
        "dir and rebuilt when the dataset changes")
    add(select, "--skip-bids-validation", action="store_true",
        help="do not run the BIDS validator on the input")
    add(select, "--strict", action="store_true",
        help="refuse the whole run when a selected participant cannot be processed (e.g. no "
        "T1w); by default the others are processed and the run exits 66 at the end")

    perf = parser.add_argument_group("Performance and execution")
    add(perf, "--nprocs", type=_positive_int, metavar="N",
        help="processes to run at once (default: all CPUs)")
    add(perf, "--omp-nthreads", type=_positive_int, metavar="N",
        help="threads per process (default: min(8, nprocs - 1))")
    add(perf, "--mem-mb", type=_positive_int, metavar="MB", help="memory limit for scheduling")
    add(perf, "--use-plugin", type=Path, metavar="FILE",
        help="nipype plugin settings (YAML: plugin, plugin_args), e.g. for SLURM")
    add(perf, "--stop-on-first-crash", action="store_true",
        help="stop at the first failing step instead of running everything else")
    add(perf, "--device", choices=DEVICES, help="where models run (default: auto)")
    add(perf, "--precision", choices=("auto", "float32", "bfloat16"),
        help="autocast precision of the models on a CPU (GPUs: bfloat16); auto: bfloat16 where "
        "the CPU computes it natively (AVX-512 BF16, AMX), else float32 (default: auto)")
    add(perf, "--sloppy", action="store_true",
        help="fast, low-quality registration (testing only)")

    work = parser.add_argument_group("Work directory and configuration")
    add(work, "--work-dir", "-w", type=Path, metavar="DIR",
        help="intermediate files; re-running with the same work dir resumes "
        "(default: ./work)")
    add(work, "--clean-workdir", action="store_true",
        help="empty the work dir before starting (do not use with concurrent runs)")
    add(work, "--cache-dir", type=Path, metavar="DIR",
        help="caches: TemplateFlow, model weights, matplotlib (default: $FMRILM_CACHE_DIR or "
        "~/.cache/fmrilm-bids, else WORK_DIR/cache)")
    add(work, "--config-file", type=Path, metavar="TOML",
        help="settings file (as the config.toml every run saves in OUTPUT_DIR/logs/)")
    add(work, "--seed", type=int, help="master random seed")
    work.add_argument("-v", "--verbose", dest="verbosity", action="count",
                      help="more log output (-vv for debugging)")

    wf = parser.add_argument_group("Workflow")
    add(wf, "--atlas", dest="atlases", nargs="+", metavar="ATLAS",
        help="AAL3 (default), AAL, HCPEx, or a labelled NIfTI with a label TSV beside it")
    add(wf, "--denoise-strategy", metavar="NAME",
        help="confound regression strategy (default: 24P+aCompCor)")
    add(wf, "--high-pass", type=float, metavar="HZ", help="high-pass cutoff (default: 0.008)")
    add(wf, "--fd-threshold", type=float, metavar="MM",
        help="framewise displacement above which a volume is an outlier (default: 0.5)")
    add(wf, "--scrub", action="store_true", help="censor high-motion volumes")
    add(wf, "--dummy-scans", type=int, metavar="N",
        help="non-steady-state volumes at the start (default: detected)")
    add(wf, "--output-spaces", nargs="+", type=_output_space, metavar="SPACE",
        help="template spaces in fMRIPrep's grammar, e.g. MNI152NLin2009cAsym:res-2 "
        "MNI152NLin6Asym, from the TemplateFlow home (nothing is downloaded); the first is "
        "where registration, confounds and parcellation happen; the others need "
        f"--output-bold (default: {DEFAULT_SPACE}, bundled)")
    add(wf, "--ignore", nargs="+", choices=IGNORE_CHOICES, metavar="STEP",
        help="leave steps out, as fMRIPrep: 'fieldmaps' (no susceptibility distortion "
        "correction even where field maps exist), 'slicetiming' (no slice-timing "
        "correction), 'fmap-jacobian' (unwarp without the Jacobian intensity correction); "
        f"choices: {', '.join(IGNORE_CHOICES)}")
    add(wf, "--output-bold", action="store_true",
        help="also write the preprocessed BOLD and its mask in every output space (large)")
    stim = parser.add_argument_group(
        "Stimulus models (participant level, runs whose events.tsv has trial_type or captions)")
    add(stim, "--no-stimulus-models", dest="stimulus_models", action="store_false",
        help="skip single-trial responses, the encoding model and selectivity captions")
    add(stim, "--stimulus-unit", choices=("auto", "event", "block"),
        help="one response per event or per block of same-type events (default: auto, "
        "blocks when events come in blocks)")
    add(stim, "--caption-column", metavar="COLUMN",
        help="events.tsv column holding each event's caption (default: caption)")
    add(stim, "--stim-captions", type=Path, metavar="TSV",
        help="table of captions (columns stim_file, caption) for events with a stim_file")
    add(stim, "--stimulus-features", nargs="+", choices=("sentence", "llm"),
        help="text feature spaces of the encoding model; two give a banded ridge "
        "(default: sentence)")
    add(stim, "--encoding-cv", choices=("auto", "run", "block"),
        help="cross-validation folds by run or by block (default: auto, by run with two "
        "runs or more)")
    add(stim, "--encoding-folds", type=int, metavar="N",
        help="outer cross-validation folds (default: 5)")
    add(stim, "--decoding-folds", type=int, metavar="N",
        help="cross-validation folds of the decoders, by the same runs or blocks "
        "(default: 12: up to 12 runs or blocks, each is held out alone, so a category "
        "with two blocks or more always keeps one for training)")
    add(stim, "--adapter-folds", type=int, metavar="N",
        help="group level: folds of each participant in the shared decoder's few-shot test "
        "(each participant as a new one; a shared decoder is trained per fold; default: 4)")
    add(stim, "--contrastive-alignment", type=float, metavar="W",
        help="weight of LLM-VEM's contrastive alignment term (default: 0, plain ridge)")
    add(stim, "--selectivity-top", type=int, metavar="N",
        help="selectivity captions per region (default: 10)")
    add(wf, "--model", dest="model_dir", type=Path, metavar="DIR",
        help="a trained fmrilm-bids model to apply at participant level")
    add(wf, "--llm", dest="llm_dir", type=Path, metavar="DIR",
        help="a local Hugging Face causal LM folder (default: SmolLM2-135M-Instruct)")
    add(wf, "--tokenizer-steps", type=int, metavar="N",
        help="group level: Stage-1 tokenizer training steps (default: from the data, 100 "
        "passes over the training windows, at least 300 steps)")
    add(wf, "--lm-steps", type=int, metavar="N",
        help="group level: training steps of each language-model stage (default: from the "
        "data, --lm-epochs)")
    add(wf, "--lm-epochs", type=float, nargs=2, metavar=("STAGE2", "STAGE3"),
        help="group level: passes over the examples of Stage 2 and Stage 3 when --lm-steps "
        "is not given (default: 1 2)")
    add(wf, "--fmri-inputs", choices=("continuous", "discrete"),
        help="group level: what the language model reads at an fMRI token: its continuous "
        "Stage-1 features through a learned projection (default), or the token's embedding "
        "(the discrete ablation)")
    add(wf, "--reference-group", metavar="GROUP",
        help="group level: grade the descriptors against the participants whose "
        "participants.tsv 'group' is GROUP (e.g. control; default: all selected runs)")
    add(wf, "--networks", choices=("atlas", "data-driven"),
        help="group level: group parcels into networks by the atlas's network table "
        "(default) or by clustering the cohort's functional connectivity")
    add(wf, "--questions", nargs="+", metavar="COLUMN",
        help="group level: participants.tsv columns asked about (default: those of sex, age, "
        "group, diagnosis present)")
    add(wf, "--zero-shot", nargs="+", metavar="QUESTION",
        help="group level: questions kept out of tuning and evaluated zero- and few-shot "
        "(e.g. condition, rest_vs_task, sex)")
    add(wf, "--few-shot-k", type=int, metavar="K",
        help="group level: answered examples per class in few-shot prompts (default: 2)")
    add(wf, "--gradient-checkpointing", action="store_true",
        help="group level: recompute the language model's activations in the backward pass "
        "(less GPU memory, about 30%% more time)")
    return parser
