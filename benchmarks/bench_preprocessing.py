"""Benchmark the preprocessing: wall time and peak memory per BOLD run.

Cases (each in a fresh Python process, nipype's Linear plugin, so the process's peak
resident memory is the run's):

* ``demo-rest``, ``demo-images``: sub-01 of the simulated demo dataset (defaults of
  :func:`fmrilm_bids.simulate.simulate_dataset`); the two runs share a work directory, so
  the second reuses the anatomical workflow of the first (its time is listed once);
* ``64x64x40x200``: one simulated resting run at 3 mm, cut to a 64x64x40 grid, 200 volumes;
* ``T1w-0.7mm`` (``--anat``): the anatomical workflow alone on a 0.7 mm T1w of 274 x 384 x
  384 voxels (the simulator's 1 mm T1w of sub-01, resampled), with the Dice of its brain mask
  against the simulator's truth (the template's brain mask moved by the true head pose).
* ``--fieldmaps``: susceptibility distortion correction against the simulator's truth. One
  participant, one resting run of 60 volumes at 4 mm distorted by a B0 field (peak 100 Hz
  under the orbitofrontal cortex, phase encoding ``j-``, up to 2.8 voxels of shift), measured
  by a phase-difference map or by AP/PA EPI references (the BOLD run is the same in both
  datasets). Cases: ``no SDC`` (``--ignore fieldmaps``, before), ``phasediff`` and ``pepolar``
  (after). Figures: the correlation of the template-space mean BOLD with the undistorted
  image the simulator formed, where the true shift is a voxel or more (``r_distorted``) and
  over the brain (``r_brain``); the mean error of the voxel shift map there (``vsm_mae``,
  voxels; before: the shift left uncorrected); the BOLD stage's time and that of its
  field-map nodes.

Usage::

    python benchmarks/bench_preprocessing.py [--out DIR] [--nprocs 2] [--sloppy] [--anat]
    python benchmarks/bench_preprocessing.py --fieldmaps [--sloppy]

Prints a table: per run, its shape, the time of the anatomical and BOLD stages, the total
wall time of the process and its peak resident memory (and the Dice for ``--anat``).

Measured (``--anat``, 2 shared cores, load average about 3; same simulated T1w), before and
after fitting N4 and the registration of a fine T1w on shrunk copies:

=============  ==========  ======  =============  ==========  ========  =====
T1w-0.7mm      conform_s   n4_s    register_s     anat_s      peak_GiB  dice
=============  ==========  ======  =============  ==========  ========  =====
before         2.0         113.3   113.2          228.7       3.83      0.840
after          1.6         30.3    51.4           83.6        1.65      0.848
=============  ==========  ======  =============  ==========  ========  =====

Measured (``--fieldmaps``, 2 shared cores, load average about 6), before (no correction) and
after (each field map); the times are of the BOLD stage and of its field-map nodes:

===========  ===========  =======  =======  ======  ======
case         r_distorted  r_brain  vsm_mae  bold_s  sdc_s
===========  ===========  =======  =======  ======  ======
no SDC       0.272        0.797    1.328    63.7    -
phasediff    0.718        0.847    0.072    53.6    1.3
pepolar      0.750        0.848    0.088    84.2    17.5
===========  ===========  =======  =======  ======  ======
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _prepare_environment(root: Path) -> None:
    from fmrilm_bids.utils.environment import configure_environment

    configure_environment(work_dir=root / "work")


def make_datasets(root: Path) -> dict[str, Path]:
    """Simulate the demo participant and the 64x64x40x200 run (once; reused if present)."""
    import nibabel as nib
    import numpy as np

    from fmrilm_bids.simulate import simulate_dataset

    demo = root / "demo"
    if not (demo / "dataset_description.json").is_file():
        simulate_dataset(demo, n_subjects=1, seed=0)
    large = root / "large"
    if not (large / "dataset_description.json").is_file():
        simulate_dataset(large, n_subjects=1, runs=("rest",), n_volumes=200,
                         bold_voxel_size=3.0, seed=1, overwrite=True)
        bold_path = large / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"
        img = nib.load(bold_path)
        data = np.asarray(img.dataobj)
        target = np.array([64, 64, 40])
        start = (np.array(data.shape[:3]) - target) // 2  # negative: pad
        out = np.zeros((*target, data.shape[3]), dtype=data.dtype)
        src = [slice(max(s, 0), max(s, 0) + min(t, n - max(s, 0)))
               for s, t, n in zip(start, target, data.shape[:3], strict=True)]
        dst = [slice(max(-s, 0), max(-s, 0) + (sl.stop - sl.start))
               for s, sl in zip(start, src, strict=True)]
        out[tuple(dst)] = data[tuple(src)]
        affine = img.affine.copy()
        affine[:3, 3] = img.affine[:3, :3] @ start + img.affine[:3, 3]
        cut = nib.Nifti1Image(out, affine, img.header)
        cut.header.set_slope_inter(*img.header.get_slope_inter())
        cut.to_filename(bold_path)
        sidecar = bold_path.with_name("sub-01_task-rest_bold.json")
        meta = json.loads(sidecar.read_text())
        timing = np.asarray(meta["SliceTiming"])
        kept = timing[max(start[2], 0):max(start[2], 0) + target[2]]
        meta["SliceTiming"] = [float(t) for t in kept]
        sidecar.write_text(json.dumps(meta, indent=2))
    return {"demo": demo, "large": large}


FINE_SHAPE, FINE_VOXEL = (274, 384, 384), 0.7


def make_fine_t1w(root: Path) -> Path:
    """A dataset whose sub-01 T1w is 0.7 mm, 274 x 384 x 384 (once; reused if present).

    Returns
    -------
    Path
        The dataset; ``sourcedata/fine_truth_mask.nii.gz`` holds the true brain mask on the
        T1w grid.
    """
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    from fmrilm_bids.resources.templates import get_template
    from fmrilm_bids.simulate import simulate_dataset
    from fmrilm_bids.simulate.truth import TRUTH_DIR, subject_truth_file

    fine = root / "fine"
    truth_mask = fine / "sourcedata" / "fine_truth_mask.nii.gz"
    if truth_mask.is_file():
        return fine
    simulate_dataset(fine, n_subjects=1, runs=("rest",), n_volumes=20, anat_resolution=1,
                     seed=2, overwrite=True)
    t1w_path = fine / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    coarse = nib.load(t1w_path)
    centre = coarse.affine @ np.append((np.array(coarse.shape[:3]) - 1) / 2, 1)
    affine = coarse.affine.copy()
    affine[:3, :3] = coarse.affine[:3, :3] / np.linalg.norm(coarse.affine[:3, :3], axis=0) \
        * FINE_VOXEL
    affine[:3, 3] = centre[:3] - affine[:3, :3] @ ((np.array(FINE_SHAPE) - 1) / 2)
    to_coarse = np.linalg.inv(coarse.affine) @ affine
    data = ndimage.affine_transform(np.asarray(coarse.dataobj, np.float32), to_coarse,
                                    output_shape=FINE_SHAPE, order=1)
    nib.Nifti1Image(data.astype(np.int16), affine).to_filename(t1w_path)
    truth = json.loads((fine / TRUTH_DIR / subject_truth_file("01")).read_text())
    mni_to_t1w = np.array(truth["mni_to_t1w"]["matrix"])
    template_mask = nib.load(get_template(1, "mask", desc="brain"))
    to_template = np.linalg.inv(template_mask.affine) @ np.linalg.inv(mni_to_t1w) @ affine
    mask = ndimage.affine_transform(np.asarray(template_mask.dataobj, np.float32), to_template,
                                    output_shape=FINE_SHAPE, order=1) > 0.5
    nib.Nifti1Image(mask.astype(np.uint8), affine).to_filename(truth_mask)
    return fine


def run_anat_case(bids_dir: Path, work_root: Path, sloppy: bool) -> dict:
    """The anatomical workflow of sub-01 alone in this process; time, memory and Dice."""
    import nibabel as nib
    import numpy as np

    from fmrilm_bids.config import Config, ExecutionConfig, WorkflowConfig
    from fmrilm_bids.workflows.anatomical import init_anat_preproc_wf

    config = Config(execution=ExecutionConfig(
        bids_dir=bids_dir, output_dir=work_root / "out", analysis_level="participant",
        work_dir=work_root / "work", run_uuid="bench"), workflow=WorkflowConfig(sloppy=sloppy))
    t1w = bids_dir / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    workflow = init_anat_preproc_wf((t1w,), config)
    workflow.base_dir = str(config.execution.work_dir)
    started = time.monotonic()
    workflow.run(plugin="Linear")
    wall = time.monotonic() - started
    (mask_file,) = Path(config.execution.work_dir).rglob("t1w_desc-brain_mask.nii.gz")
    mask = np.asarray(nib.load(mask_file).dataobj) > 0
    truth = np.asarray(nib.load(bids_dir / "sourcedata" / "fine_truth_mask.nii.gz").dataobj) > 0
    return {"wall_s": wall, "stages": _stage_times(config.execution.work_dir, started),
            "shape": list(nib.load(t1w).shape),
            "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "dice": float(2 * (mask & truth).sum() / (mask.sum() + truth.sum()))}


def run_case(bids_dir: Path, task: str, work_root: Path, nprocs: int, sloppy: bool,
             sdc: dict | None = None) -> dict:
    """Preprocess sub-01's ``task`` run of ``bids_dir`` in this process; return figures.

    ``sdc``: a field-map case, ``{"ignore": [...]}`` (``--ignore``); the preprocessed BOLD
    is then written, and :func:`fieldmap_figures` measured."""
    import nibabel as nib

    from fmrilm_bids.config import Config, ExecutionConfig, NipypeConfig, WorkflowConfig
    from fmrilm_bids.dataset.derivatives import write_derivatives_skeleton
    from fmrilm_bids.dataset.layout import index_dataset, select_runs
    from fmrilm_bids.workflows.base import init_fmrilm_wf

    config = Config(
        execution=ExecutionConfig(bids_dir=bids_dir, output_dir=work_root / "out",
                                  analysis_level="participant", work_dir=work_root / "work",
                                  run_uuid="bench"),
        nipype=NipypeConfig(plugin="Linear", nprocs=nprocs, omp_nthreads=nprocs),
        workflow=WorkflowConfig(sloppy=sloppy, ignore=list((sdc or {}).get("ignore", [])),
                                output_bold=sdc is not None),
    )
    selection = select_runs(index_dataset(bids_dir, config.execution.bids_cache_dir),
                            task_id=[task],
                            fieldmaps="fieldmaps" not in config.workflow.ignore)
    write_derivatives_skeleton(config.execution.output_dir, bids_dir)
    workflow = init_fmrilm_wf(selection, config)
    workflow.base_dir = str(config.execution.work_dir)
    started = time.monotonic()
    workflow.run(plugin="Linear")
    wall = time.monotonic() - started
    result = {"wall_s": wall, "stages": _stage_times(config.execution.work_dir, started),
              "shape": list(nib.load(selection.bold_runs[0].path).shape),
              "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if sdc is not None:
        result["sdc"] = fieldmap_figures(bids_dir, config.execution.output_dir,
                                         config.execution.work_dir)
    return result


def make_fieldmap_datasets(root: Path) -> dict[str, Path]:
    """The distorted participant with each kind of field map (once; reused if present)."""
    from fmrilm_bids.simulate import simulate_dataset

    datasets = {}
    for kind in ("phasediff", "pepolar"):
        datasets[kind] = root / f"fmap-{kind}"
        if not (datasets[kind] / "dataset_description.json").is_file():
            simulate_dataset(datasets[kind], n_subjects=1, runs=("rest",), n_volumes=60,
                             seed=3, fieldmap=kind, overwrite=True)
    return datasets


def fieldmap_figures(bids_dir: Path, out_dir: Path, work_dir: Path) -> dict[str, float]:
    """Alignment of a run's template-space mean BOLD with the simulator's undistorted image,
    and the error of its voxel shift map (see the module docstring)."""
    import nibabel as nib
    import numpy as np

    from fmrilm_bids.preproc.fieldmap import magnitude_mask
    from fmrilm_bids.resources.templates import get_template
    from fmrilm_bids.simulate.truth import true_shift_map, undistorted_reference

    reference = undistorted_reference(bids_dir)
    shift = true_shift_map(bids_dir, "01", "rest", template_space=True)
    brain = np.asarray(nib.load(get_template(2, suffix="mask", desc="brain")).dataobj) > 0
    distorted = brain & (np.abs(shift) >= 1)
    (bold,) = Path(out_dir).rglob("*_desc-preproc_bold.nii.gz")
    mean = np.asarray(nib.load(bold).dataobj, dtype=np.float64).mean(axis=-1)
    (boldref,) = Path(work_dir).rglob("bold_preproc_wf/boldref/boldref.nii.gz")
    truth = true_shift_map(bids_dir, "01", "rest")
    strong = magnitude_mask(nib.load(boldref).get_fdata()) & (np.abs(truth) >= 1)
    vsm_files = list(Path(work_dir).rglob("fmap2bold/vsm.nii.gz"))
    estimate = nib.load(vsm_files[0]).get_fdata() if vsm_files else np.zeros(truth.shape)
    return {"r_distorted": float(np.corrcoef(mean[distorted], reference[distorted])[0, 1]),
            "r_brain": float(np.corrcoef(mean[brain], reference[brain])[0, 1]),
            "vsm_mae": float(np.abs(estimate - truth)[strong].mean()),
            "max_shift": float(np.abs(truth).max())}


def print_fieldmap_table(rows: list[tuple[str, dict]]) -> None:
    """The field-map cases as (case, figure, value, target, met) rows."""
    before = dict(rows)["no SDC"]["sdc"]
    print(f"\nsusceptibility distortion correction (simulated B0 field, up to "
          f"{before['max_shift']:.1f} voxels of shift along j-)")
    print(f"{'case':<11}{'figure':<28}{'value':>8}  {'target':<22}met")
    for name, row in rows:
        sdc = row["sdc"]
        checks = [("r_distorted (vs truth)", sdc["r_distorted"], ">= 0.55, before + 0.2",
                   name == "no SDC" or (sdc["r_distorted"] >= 0.55 and sdc["r_distorted"]
                                        >= before["r_distorted"] + 0.2)),
                  ("r_brain (vs truth)", sdc["r_brain"], "> before",
                   name == "no SDC" or sdc["r_brain"] > before["r_brain"]),
                  ("vsm_mae (voxels, shift>=1)", sdc["vsm_mae"], "< 0.3",
                   name == "no SDC" or sdc["vsm_mae"] < 0.3),
                  ("BOLD stage time (s)", row["stages"]["bold_s"], "", True),
                  ("  of which field map (s)", row["stages"]["sdc_s"], "", True)]
        for figure, value, target, met in checks:
            shown = "-" if name == "no SDC" and target else ("yes" if met else "NO")
            print(f"{name:<11}{figure:<28}{value:>8.3f}  {target:<22}{shown}")


def _stage_times(work_dir: Path, since: float) -> dict[str, float]:
    """Seconds spent in anatomical and BOLD nodes that ran in this process (not cached);
    ``sdc_s``: the BOLD nodes that estimate and register the field map (part of ``bold_s``).
    """
    from nipype.utils.filemanip import loadpkl

    stages = {"anat_s": 0.0, "bold_s": 0.0, "sdc_s": 0.0}
    wall_since = time.time() - (time.monotonic() - since)
    for result_file in Path(work_dir).rglob("result_*.pklz"):
        if result_file.stat().st_mtime < wall_since:
            continue
        runtime = loadpkl(result_file).runtime
        key = "anat_s" if "anat_preproc_wf" in str(result_file) else "bold_s"
        seconds = float(getattr(runtime, "duration", 0.0) or 0.0)
        stages[key] += seconds
        if "fmap" in result_file.parent.name:
            stages["sdc_s"] += seconds
    return stages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--sloppy", action="store_true", help="fast, coarse registration")
    parser.add_argument("--anat", action="store_true",
                        help="only the anatomical workflow on a 0.7 mm 274x384x384 T1w")
    parser.add_argument("--fieldmaps", action="store_true",
                        help="susceptibility distortion correction against the simulator's "
                        "truth (before / phasediff / pepolar)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, JSON out
    args = parser.parse_args(argv)
    root = (args.out or Path(tempfile.mkdtemp(prefix="bench-preproc-"))).absolute()
    root.mkdir(parents=True, exist_ok=True)
    _prepare_environment(root)
    if args.case:
        dataset, task, work, *sdc = json.loads(args.case)
        result = (run_anat_case(Path(dataset), Path(work), args.sloppy) if task == "anat"
                  else run_case(Path(dataset), task, Path(work), args.nprocs, args.sloppy,
                                sdc[0] if sdc else None))
        print(json.dumps(result))
        return
    extra: dict[str, dict] = {}
    if args.fieldmaps:
        datasets = make_fieldmap_datasets(root)
        cases = [("no SDC", datasets["phasediff"], "rest", root / "run-nosdc"),
                 ("phasediff", datasets["phasediff"], "rest", root / "run-phasediff"),
                 ("pepolar", datasets["pepolar"], "rest", root / "run-pepolar")]
        extra = {"no SDC": {"ignore": ["fieldmaps"]}, "phasediff": {}, "pepolar": {}}
    elif args.anat:
        cases = [("T1w-0.7mm", make_fine_t1w(root), "anat", root / "run-fine")]
    else:
        datasets = make_datasets(root)
        cases = [("demo-rest", datasets["demo"], "rest", root / "run-demo"),
                 ("demo-images", datasets["demo"], "images", root / "run-demo"),
                 ("64x64x40x200", datasets["large"], "rest", root / "run-large")]
    rows = []
    for name, dataset, task, work in cases:
        case = [str(dataset), task, str(work), *([extra[name]] if name in extra else [])]
        command = [sys.executable, __file__, "--out", str(root), "--nprocs", str(args.nprocs),
                   "--case", json.dumps(case)]
        if args.sloppy:
            command.append("--sloppy")
        env = dict(os.environ, OMP_NUM_THREADS=str(args.nprocs))
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if done.returncode:
            raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
        rows.append((name, json.loads(done.stdout.strip().splitlines()[-1])))
    if args.fieldmaps:
        print_fieldmap_table(rows)
    print(f"\npreprocessing benchmark ({args.nprocs} processes"
          f"{', sloppy' if args.sloppy else ''}); anat_s: 0 when reused from the work dir")
    print(f"{'run':<14}{'shape':<18}{'anat_s':>8}{'bold_s':>8}{'wall_s':>8}{'peak_GiB':>10}"
          + (f"{'dice':>8}" if args.anat else ""))
    for name, row in rows:
        shape = "x".join(str(s) for s in row["shape"])
        print(f"{name:<14}{shape:<18}{row['stages']['anat_s']:>8.1f}"
              f"{row['stages']['bold_s']:>8.1f}{row['wall_s']:>8.1f}{row['peak_gib']:>10.2f}"
              + (f"{row['dice']:>8.3f}" if "dice" in row else ""))
    if not args.out:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
