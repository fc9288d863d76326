"""Benchmark the preprocessing: wall time and peak memory per BOLD run.

Cases (each in a fresh Python process, nipype's Linear plugin, so the process's peak
resident memory is the run's):

* ``demo-rest``, ``demo-images``: sub-01 of the simulated demo dataset (defaults of
  :func:`fmrilm_bids.simulate.simulate_dataset`); the two runs share a work directory, so
  the second reuses the anatomical workflow of the first (its time is listed once);
* ``64x64x40x200``: one simulated resting run at 3 mm, cut to a 64x64x40 grid, 200 volumes.

Usage::

    python benchmarks/bench_preprocessing.py [--out DIR] [--nprocs 2] [--sloppy]

Prints a table: per run, its shape, the time of the anatomical and BOLD stages, the total
wall time of the process and its peak resident memory.
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


def run_case(bids_dir: Path, task: str, work_root: Path, nprocs: int, sloppy: bool) -> dict:
    """Preprocess sub-01's ``task`` run of ``bids_dir`` in this process; return figures."""
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
        workflow=WorkflowConfig(sloppy=sloppy),
    )
    selection = select_runs(index_dataset(bids_dir, config.execution.bids_cache_dir),
                            task_id=[task])
    write_derivatives_skeleton(config.execution.output_dir, bids_dir)
    workflow = init_fmrilm_wf(selection, config)
    workflow.base_dir = str(config.execution.work_dir)
    started = time.monotonic()
    workflow.run(plugin="Linear")
    wall = time.monotonic() - started
    return {"wall_s": wall, "stages": _stage_times(config.execution.work_dir, started),
            "shape": list(nib.load(selection.bold_runs[0].path).shape),
            "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _stage_times(work_dir: Path, since: float) -> dict[str, float]:
    """Seconds spent in anatomical and BOLD nodes that ran in this process (not cached)."""
    from nipype.utils.filemanip import loadpkl

    stages = {"anat_s": 0.0, "bold_s": 0.0}
    wall_since = time.time() - (time.monotonic() - since)
    for result_file in Path(work_dir).rglob("result_*.pklz"):
        if result_file.stat().st_mtime < wall_since:
            continue
        runtime = loadpkl(result_file).runtime
        key = "anat_s" if "anat_preproc_wf" in str(result_file) else "bold_s"
        stages[key] += float(getattr(runtime, "duration", 0.0) or 0.0)
    return stages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--sloppy", action="store_true", help="fast, coarse registration")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, JSON out
    args = parser.parse_args(argv)
    root = (args.out or Path(tempfile.mkdtemp(prefix="bench-preproc-"))).absolute()
    root.mkdir(parents=True, exist_ok=True)
    _prepare_environment(root)
    if args.case:
        dataset, task, work = json.loads(args.case)
        print(json.dumps(run_case(Path(dataset), task, Path(work), args.nprocs, args.sloppy)))
        return
    datasets = make_datasets(root)
    cases = [("demo-rest", datasets["demo"], "rest", root / "run-demo"),
             ("demo-images", datasets["demo"], "images", root / "run-demo"),
             ("64x64x40x200", datasets["large"], "rest", root / "run-large")]
    rows = []
    for name, dataset, task, work in cases:
        command = [sys.executable, __file__, "--out", str(root), "--nprocs", str(args.nprocs),
                   "--case", json.dumps([str(dataset), task, str(work)])]
        if args.sloppy:
            command.append("--sloppy")
        env = dict(os.environ, OMP_NUM_THREADS=str(args.nprocs))
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        if done.returncode:
            raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
        rows.append((name, json.loads(done.stdout.strip().splitlines()[-1])))
    print(f"\npreprocessing benchmark ({args.nprocs} processes"
          f"{', sloppy' if args.sloppy else ''}); anat_s: 0 when reused from the work dir")
    print(f"{'run':<14}{'shape':<18}{'anat_s':>8}{'bold_s':>8}{'wall_s':>8}{'peak_GiB':>10}")
    for name, row in rows:
        shape = "x".join(str(s) for s in row["shape"])
        print(f"{name:<14}{shape:<18}{row['stages']['anat_s']:>8.1f}"
              f"{row['stages']['bold_s']:>8.1f}{row['wall_s']:>8.1f}{row['peak_gib']:>10.2f}")
    if not args.out:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
