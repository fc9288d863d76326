"""``fmrilm-bids-simulate OUT_DIR``: write the simulated demo dataset.

Exit codes: 0 success, 2 usage, 73 the output folder cannot be written (exists and is not
empty, is a file, or the disk refuses), 70 internal error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from fmrilm_bids import __version__
from fmrilm_bids.errors import EXIT_CANT_CREATE, EXIT_OK, EXIT_SOFTWARE, EXIT_USAGE, FmrilmError
from fmrilm_bids.simulate.config import TASKS, SimulationConfig
from fmrilm_bids.simulate.fieldmap import FIELDMAP_KINDS

PROG = "fmrilm-bids-simulate"


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (defaults from :class:`SimulationConfig`)."""
    defaults = SimulationConfig()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write a simulated BIDS fMRI dataset (T1w, resting and picture-viewing "
                    "BOLD runs with captions) with its ground truth in "
                    "sourcedata/simulation.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to create (must be new or "
                        "empty unless --overwrite)")
    parser.add_argument("--subjects", type=int, default=defaults.n_subjects, metavar="N",
                        help="number of participants (default %(default)s)")
    parser.add_argument("--runs", nargs="+", choices=TASKS, default=list(defaults.runs),
                        metavar="TASK", help="BOLD runs per participant by task, e.g. "
                        f"'rest images images' (default: {' '.join(defaults.runs)})")
    parser.add_argument("--volumes", type=int, default=defaults.n_volumes, metavar="N",
                        help="volumes per run (default %(default)s)")
    parser.add_argument("--tr", type=float, default=defaults.repetition_time, metavar="S",
                        help="repetition time in seconds (default %(default)s)")
    parser.add_argument("--bold-voxel-size", type=float, default=defaults.bold_voxel_size,
                        metavar="MM", help="isotropic BOLD voxel size (default %(default)s)")
    parser.add_argument("--anat-resolution", type=int, choices=(1, 2),
                        default=defaults.anat_resolution,
                        help="T1w voxel size in mm (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="random seed (default %(default)s)")
    parser.add_argument("--motion-scale", type=float, default=defaults.motion_scale,
                        metavar="X", help="head-motion multiplier, 0 for none "
                        "(default %(default)s)")
    parser.add_argument("--noise-level", type=float, default=defaults.noise_level,
                        metavar="X", help="thermal noise relative to grey matter, 0 for none "
                        "(default %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT_DIR if it exists and is not empty")
    parser.add_argument("--task-design", choices=("event", "block"),
                        default=defaults.task_design,
                        help="picture task: jittered single events, or blocks of one category "
                        "(default: %(default)s)")
    parser.add_argument("--blocks", type=int, default=defaults.n_blocks, metavar="N",
                        help="blocks per run with --task-design block (default: %(default)s)")
    parser.add_argument("--fieldmap", choices=FIELDMAP_KINDS, default=defaults.fieldmap,
                        help="distort the BOLD runs by a B0 field (near the sinuses and ear "
                        "canals) and write its field map: a phase difference with magnitudes, "
                        "or two EPI references of opposite phase encoding (default: "
                        "%(default)s)")
    parser.add_argument("--fieldmap-strength", type=float, default=defaults.fieldmap_strength,
                        metavar="HZ", help="peak off-resonance of the field (default "
                        "%(default)s)")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fmrilm-bids-simulate``; returns the exit code."""
    parser = build_parser()
    opts = parser.parse_args(argv)
    try:
        config = SimulationConfig(
            n_subjects=opts.subjects, runs=tuple(opts.runs), n_volumes=opts.volumes,
            repetition_time=opts.tr, bold_voxel_size=opts.bold_voxel_size,
            anat_resolution=opts.anat_resolution, seed=opts.seed,
            motion_scale=opts.motion_scale, noise_level=opts.noise_level,
            task_design=opts.task_design, n_blocks=opts.blocks, fieldmap=opts.fieldmap,
            fieldmap_strength=opts.fieldmap_strength)
    except ValueError as err:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    from fmrilm_bids.simulate.simulator import simulate_dataset
    from fmrilm_bids.utils.environment import configure_environment

    try:
        configure_environment()
        start = time.perf_counter()
        out = simulate_dataset(opts.out_dir, config, overwrite=opts.overwrite)
    except FmrilmError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # no writable cache, a read-only parent folder, a full disk
        print(f"{PROG}: error: cannot write the dataset: {err}", file=sys.stderr)
        return EXIT_CANT_CREATE
    except Exception as err:
        print(f"{PROG}: internal error: {type(err).__name__}: {err} (please report it)",
              file=sys.stderr)
        return EXIT_SOFTWARE
    print(f"Wrote {out} ({config.n_subjects} participants, {len(config.runs)} runs each) in "
          f"{time.perf_counter() - start:.1f} s; ground truth in {out}/sourcedata/simulation")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
