"""Susceptibility distortion correction: the maths on synthetic arrays against known truth,
field-map discovery the BIDS way, bad field-map metadata, and ``--ignore fieldmaps``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bids_app.run import main
from fmrilm_bids.config import Config, ExecutionConfig, WorkflowConfig
from fmrilm_bids.dataset.checks import check_selection
from fmrilm_bids.dataset.fieldmaps import (
    PEPOLAR,
    PHASEDIFF,
    phase_encoding,
    resolve_intent,
    total_readout_time,
)
from fmrilm_bids.dataset.layout import index_dataset, select_runs
from fmrilm_bids.errors import EXIT_DATA, InputDataError
from fmrilm_bids.preproc import fieldmap as fm
from fmrilm_bids.preproc.resampling import resample_series
from fmrilm_bids.workflows.bold import init_bold_wf, sdc_metadata


def _ellipsoid(shape: tuple[int, int, int], radii: tuple[float, float, float]) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    centre = (np.asarray(shape) - 1) / 2.0
    return sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3))


def _blob(shape, centre, width, amplitude) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    squared = sum((grid[a] - centre[a]) ** 2 for a in range(3))
    return amplitude * np.exp(-squared / (2.0 * width ** 2))


def _distort(volume: np.ndarray, vsm: np.ndarray, axis: int) -> np.ndarray:
    """The image a distortion ``vsm`` (on the undistorted grid) makes of ``volume``, the
    forward model of ``unwarp_volume``: observed voxel ``v`` shows the point ``y`` with
    ``y + vsm(y) = v`` (fixed-point iteration, exact for ``|d vsm / dy| < 1``), divided by
    the Jacobian there."""
    grid = np.indices(np.shape(volume), dtype=np.float64)
    source = grid[axis].copy()
    coords = grid.copy()
    for _ in range(8):
        coords[axis] = source
        source = grid[axis] - ndimage.map_coordinates(vsm, coords, order=1, mode="nearest")
    coords[axis] = source
    values = ndimage.map_coordinates(np.asarray(volume, dtype=np.float64), coords, order=1,
                                     mode="constant")
    return values / ndimage.map_coordinates(fm.shift_jacobian(vsm, axis), coords, order=1,
                                            mode="nearest")


# --- the maths -------------------------------------------------------------------------


def test_phase_is_read_in_radians_from_any_range() -> None:
    radians = np.array([-np.pi, 0.0, np.pi / 2])
    assert np.allclose(fm.phase_to_radians(radians), radians)
    siemens = np.array([0.0, 2047.5, 4095.0])  # 0..4095 stands for -pi..pi
    assert np.allclose(fm.phase_to_radians(siemens), [-np.pi, 0.0, np.pi])


def test_phasediff_recovers_a_wrapped_field() -> None:
    shape, te1, te2 = (40, 48, 34), 0.005, 0.010
    rng = np.random.default_rng(7)
    head = _ellipsoid(shape, (15, 19, 13)) < 1
    truth = (_blob(shape, (20, 38, 9), 6.0, -160.0) + _blob(shape, (8, 20, 10), 5.0, 70.0)
             + 1.5 * (np.indices(shape)[2] - 17))  # blobs and a shim gradient (Hz)
    phase = 2 * np.pi * truth * (te2 - te1)
    assert np.abs(phase[head]).max() > 1.5 * np.pi  # it wraps, more than once
    wrapped = np.angle(np.exp(1j * phase))
    wrapped = np.where(head, wrapped, rng.uniform(-np.pi, np.pi, shape))  # noise in air
    stored = np.rint((wrapped + np.pi) / (2 * np.pi) * 4095)
    magnitude = np.where(head, 900.0, 0.0) + np.abs(rng.normal(0, 20, shape))
    field, mask = fm.phasediff_fieldmap(stored, magnitude, te1, te2, (3.0, 3.0, 3.0))
    inner = ndimage.binary_erosion(head, iterations=3)
    assert mask[inner].all()
    error = np.abs(field - truth)[inner]
    assert np.median(error) < 1.0 and error.mean() < 2.0  # Hz
    naive = fm.phase_to_hz(fm.phase_to_radians(stored), te1, te2)  # without unwrapping
    assert np.abs(naive - truth)[inner].mean() > 10 * error.mean()


def test_shift_map_sign_and_readout_time() -> None:
    field = np.full((4, 5, 6), 50.0)
    assert np.allclose(fm.voxel_shift_map(field, 0.03, -1), -1.5)
    metadata = {"PhaseEncodingDirection": "j-", "EffectiveEchoSpacing": 0.0005}
    assert phase_encoding(metadata) == (1, -1)
    assert total_readout_time(metadata, (64, 80, 40)) == pytest.approx(0.0005 * 79)
    assert total_readout_time({**metadata, "TotalReadoutTime": 0.05}, (64, 80, 40)) == 0.05
    with pytest.raises(ValueError, match="TotalReadoutTime"):
        total_readout_time({"PhaseEncodingDirection": "j"}, (4, 4, 4))
    with pytest.raises(ValueError, match="PhaseEncodingDirection is 'y'"):
        phase_encoding({"PhaseEncodingDirection": "y"})


def test_unwarping_undoes_an_analytic_distortion() -> None:
    """Shift s(y) = a y + b: tissue at y is imaged at y (1 + a) + b with intensity f / (1 + a),
    so the distorted image is f((v - b) / (1 + a)) / (1 + a); the displacement and the
    Jacobian (1 + a) restore f exactly (up to interpolation)."""
    shape, axis, a, b = (6, 64, 5), 1, 0.15, -2.0
    y = np.arange(shape[axis], dtype=float)

    def profile(position: np.ndarray) -> np.ndarray:
        return 100 + 80 * np.exp(-((position - 30) / 7.0) ** 2)

    distorted = np.broadcast_to(profile((y - b) / (1 + a))[None, :, None] / (1 + a), shape)
    vsm = np.broadcast_to((a * y + b)[None, :, None], shape)
    inner = slice(5, 45)  # sampled positions y (1 + a) + b stay inside the grid
    truth = profile(y)[inner]
    corrected = fm.unwarp_volume(distorted, vsm, axis)[2, inner, 2]
    assert np.abs(corrected - truth).max() < 0.5
    no_jacobian = fm.unwarp_volume(distorted, vsm, axis, jacobian=False)[2, inner, 2]
    assert np.allclose(no_jacobian * (1 + a), corrected, rtol=1e-3)
    assert np.abs(no_jacobian - truth).max() > 10
    # the forward model (as the simulator forms distorted images) is its inverse
    assert np.abs(_distort(profile(y)[None, :, None] * np.ones(shape), vsm, axis)
                  [2, 20:50, 2] - distorted[2, 20:50, 2]).max() < 0.5


def test_one_resampling_applies_the_shift_and_jacobian() -> None:
    """resample_series with a voxel shift map equals unwarping the volume (oblique grid)."""
    rng = np.random.default_rng(3)
    shape, axis = (12, 20, 10), 1
    volume = ndimage.gaussian_filter(rng.normal(500, 100, shape), 1.5)
    vsm = _blob(shape, (6, 10, 5), 4.0, 1.8)
    affine = np.array([[-2.5, 0.2, 0, 30], [0.1, 2.5, 0.3, -40], [0, -0.2, 3.0, 5],
                       [0, 0, 0, 1.0]])
    ijk = np.indices(shape, dtype=float).reshape(3, -1).T
    points = ijk @ affine[:3, :3].T + affine[:3, 3]
    jacobian = fm.shift_jacobian(vsm, axis).ravel()
    values, _ = resample_series(volume[..., None], affine, points, order=3, pe_axis=axis,
                                shifts=vsm.ravel(), jacobian=jacobian)
    expected = fm.unwarp_volume(volume, vsm, axis)
    inner = (slice(2, -2), slice(3, -3), slice(2, -2))
    assert np.allclose(values[:, 0].reshape(shape)[inner], expected[inner], atol=0.05)


def test_pepolar_estimate_recovers_the_shift() -> None:
    rng = np.random.default_rng(11)
    shape, axis = (28, 36, 26), 1
    head = _ellipsoid(shape, (11, 15, 10)) < 1
    anatomy = np.where(head, 600.0, 0.0) + 400 * ndimage.gaussian_filter(
        rng.standard_normal(shape), 1.5) * head
    anatomy = ndimage.gaussian_filter(np.clip(anatomy, 0, None), 1.0)
    truth = _blob(shape, (14, 27, 8), 4.5, -2.2)  # voxels, near the front and bottom
    plus = _distort(anatomy, truth, axis)
    minus = _distort(anatomy, -truth, axis)
    shift = fm.estimate_pepolar_shift(plus, minus, axis, (4.0, 4.0, 4.0))
    strong = head & (np.abs(truth) > 1.0)
    assert np.abs(shift - truth)[head].mean() < 0.15
    assert np.abs(shift - truth)[strong].mean() < 0.35 < np.abs(truth)[strong].mean()
    before = np.abs(plus - minus)[head].mean()
    after = np.abs(fm.unwarp_volume(plus, shift, axis)
                   - fm.unwarp_volume(minus, -shift, axis))[head].mean()
    assert after < 0.3 * before


# --- discovery ---------------------------------------------------------------------------


def _image(path: Path, shape=(6, 6, 4), value: float = 500.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    nib.Nifti1Image((value + rng.normal(0, 5, shape)).astype(np.float32),
                    np.diag([3.0, 3.0, 3.0, 1.0])).to_filename(path)
    return path


def _phasediff(root: Path, sub: str = "01", name: str = "", **metadata) -> Path:
    fmap = root / f"sub-{sub}" / "fmap"
    stem = f"sub-{sub}{name}"
    _image(fmap / f"{stem}_magnitude1.nii.gz")
    path = _image(fmap / f"{stem}_phasediff.nii.gz")
    (fmap / f"{stem}_phasediff.json").write_text(json.dumps(
        {"EchoTime1": 0.00492, "EchoTime2": 0.00738, **metadata}))
    return path


def _epi(root: Path, direction: str, pe: str, sub: str = "01", **metadata) -> Path:
    fmap = root / f"sub-{sub}" / "fmap"
    path = _image(fmap / f"sub-{sub}_dir-{direction}_epi.nii.gz")
    (fmap / f"sub-{sub}_dir-{direction}_epi.json").write_text(json.dumps(
        {"PhaseEncodingDirection": pe, "TotalReadoutTime": 0.03, **metadata}))
    return path


def _bold_metadata(root: Path, task: str, sub: str = "01", **metadata) -> None:
    (root / f"sub-{sub}" / "func" / f"sub-{sub}_task-{task}_bold.json").write_text(
        json.dumps({"PhaseEncodingDirection": "j-", "EffectiveEchoSpacing": 0.0006,
                    **metadata}))


def _fieldmaps(root: Path, tmp_path: Path) -> dict[str, object]:
    selection = select_runs(index_dataset(root, tmp_path / "db"))
    return {run.name: run.fieldmap for run in selection.bold_runs}


def test_intended_for_relative_path_and_bids_uri(tiny_bids: Path, tmp_path: Path) -> None:
    phasediff = _phasediff(tiny_bids, IntendedFor="func/sub-01_task-rest_bold.nii.gz")
    plus = _epi(tiny_bids, "PA", "j", sub="02",
                IntendedFor=["bids::sub-02/func/sub-02_task-faces_bold.nii.gz"])
    minus = _epi(tiny_bids, "AP", "j-", sub="02",
                 IntendedFor=["bids::sub-02/func/sub-02_task-faces_bold.nii.gz"])
    found = _fieldmaps(tiny_bids, tmp_path)
    assert found["sub-01_task-rest"].method == PHASEDIFF
    assert found["sub-01_task-rest"].sources == (
        phasediff, phasediff.with_name("sub-01_magnitude1.nii.gz"))
    assert found["sub-01_task-rest"].echo_times == (0.00492, 0.00738)
    assert found["sub-02_task-faces"].method == PEPOLAR
    assert set(found["sub-02_task-faces"].sources) == {plus, minus}
    assert found["sub-01_task-faces"] is None and found["sub-02_task-rest"] is None
    assert resolve_intent("bids:other:sub-01/func/x.nii.gz", tiny_bids, "01") is None


def test_b0_field_identifier_takes_precedence(tiny_bids: Path, tmp_path: Path) -> None:
    # IntendedFor names the rest run, but the identifiers say the faces run: as SDCflows,
    # B0FieldIdentifier wins and IntendedFor is not used.
    _phasediff(tiny_bids, IntendedFor="func/sub-01_task-rest_bold.nii.gz",
               B0FieldIdentifier="pd1")
    for suffix in ("magnitude1",):
        (tiny_bids / f"sub-01/fmap/sub-01_{suffix}.json").write_text(
            json.dumps({"B0FieldIdentifier": "pd1"}))
    _bold_metadata(tiny_bids, "faces", B0FieldSource="pd1")
    found = _fieldmaps(tiny_bids, tmp_path)
    assert found["sub-01_task-faces"].identifier == "pd1"
    assert found["sub-01_task-faces"].method == PHASEDIFF
    assert found["sub-01_task-rest"] is None


def test_field_map_without_echo_times_is_skipped_with_a_warning(
        tiny_bids: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _phasediff(tiny_bids, IntendedFor="func/sub-01_task-rest_bold.nii.gz")
    path.with_name("sub-01_phasediff.json").write_text(json.dumps(
        {"EchoTime1": 0.00492, "IntendedFor": "func/sub-01_task-rest_bold.nii.gz"}))
    with caplog.at_level(logging.WARNING, logger="fmrilm_bids.dataset"):
        found = _fieldmaps(tiny_bids, tmp_path)
    assert found["sub-01_task-rest"] is None
    (line,) = [r.getMessage() for r in caplog.records if "EchoTime2" in r.getMessage()]
    assert str(path) in line and "add EchoTime1 and EchoTime2 (s) to its sidecar" in line


def test_bold_without_phase_encoding_is_refused(tiny_bids: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _phasediff(tiny_bids, IntendedFor="func/sub-01_task-rest_bold.nii.gz")
    out = tmp_path / "out"
    code = main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation"])
    errors = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith("fmrilm-bids: error:")]
    assert code == EXIT_DATA
    assert len(errors) == 1
    assert str(tiny_bids / "sub-01/func/sub-01_task-rest_bold.nii.gz") in errors[0]
    assert "PhaseEncodingDirection is missing" in errors[0]
    assert "--ignore fieldmaps" in errors[0]
    assert not out.exists()


def test_unreadable_field_map_is_refused_in_one_line(tiny_bids: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # bids-examples ship empty placeholder _epi images: bad input (65), not a crash (70).
    intended = {"IntendedFor": "func/sub-01_task-rest_bold.nii.gz"}
    _epi(tiny_bids, "PA", "j", **intended)
    empty = _epi(tiny_bids, "AP", "j-", **intended)
    empty.write_bytes(b"")
    out = tmp_path / "out"
    code = main([str(tiny_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation"])
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("fmrilm-bids:")]
    assert code == EXIT_DATA
    assert len(lines) == 1 and str(empty) in lines[0] and "--ignore fieldmaps" in lines[0]
    assert not out.exists()


def test_ignore_fieldmaps_disables_correction(tiny_bids: Path, tmp_path: Path) -> None:
    _phasediff(tiny_bids, IntendedFor="func/sub-01_task-rest_bold.nii.gz")
    _bold_metadata(tiny_bids, "rest")
    layout = index_dataset(tiny_bids, tmp_path / "db")
    with_maps = check_selection(select_runs(layout, ["01"], task_id=["rest"]))
    (run,) = with_maps.bold_runs
    assert run.fieldmap is not None
    config = Config(execution=ExecutionConfig(
        bids_dir=tiny_bids, output_dir=tmp_path / "out", analysis_level="participant",
        work_dir=tmp_path / "work", run_uuid="x"))
    nodes = init_bold_wf(run, config).list_node_names()
    assert {"bold_preproc_wf.fmap_phasediff", "bold_preproc_wf.fmap2bold"} <= set(nodes)
    assert sdc_metadata(run, config)["SusceptibilityDistortionCorrection"]["Method"] == \
        PHASEDIFF
    config.workflow = WorkflowConfig(ignore=["fmap-jacobian"])
    workflow = init_bold_wf(run, config)
    assert workflow.get_node("bold_preproc_wf.resample").inputs.jacobian is False
    assert workflow.get_node("bold_preproc_wf.fmap2bold").inputs.jacobian is False
    assert not sdc_metadata(run, config)["SusceptibilityDistortionCorrection"][
        "JacobianCorrection"]
    (ignored,) = select_runs(layout, ["01"], task_id=["rest"], fieldmaps=False).bold_runs
    assert ignored.fieldmap is None
    config.workflow = WorkflowConfig(ignore=["fieldmaps"])
    assert not any("fmap" in node for node in init_bold_wf(ignored, config).list_node_names())
    assert "--ignore fieldmaps" in sdc_metadata(ignored, config)[
        "SusceptibilityDistortionCorrection"]["Reason"]
    # a BOLD run lacking PhaseEncodingDirection passes the checks once field maps are ignored
    _bold_metadata(tiny_bids, "rest", PhaseEncodingDirection=None)
    layout = index_dataset(tiny_bids, tmp_path / "db2")
    with pytest.raises(InputDataError, match="PhaseEncodingDirection"):
        check_selection(select_runs(layout, ["01"], task_id=["rest"]))
    check_selection(select_runs(layout, ["01"], task_id=["rest"], fieldmaps=False))


def test_ignore_is_a_setting_of_the_parser_and_the_config_file(tmp_path: Path) -> None:
    from bids_app.parser import build_parser
    from bids_app.run import build_config

    parser = build_parser()
    opts = parser.parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                              "--ignore", "fieldmaps", "slicetiming"])
    config = build_config(opts, parser)
    assert config.workflow.ignore == ["fieldmaps", "slicetiming"]
    assert Config.from_dict(config.to_dict()).workflow.ignore == ["fieldmaps", "slicetiming"]
    with pytest.raises(SystemExit):
        parser.parse_args([str(tmp_path), str(tmp_path / "o"), "participant", "--ignore",
                           "sbref"])
    settings = tmp_path / "settings.toml"
    settings.write_text('[workflow]\nignore = ["fieldmap"]\n')
    opts = parser.parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                              "--config-file", str(settings)])
    with pytest.raises(InputDataError, match="fieldmaps, slicetiming, fmap-jacobian"):
        build_config(opts, parser)


# --- the simulator's field maps, and their estimation -----------------------------------


@pytest.fixture(scope="module")
def simulated_maps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One participant, one short run, 6 mm voxels: with each kind of field map."""
    from fmrilm_bids.simulate import simulate_dataset

    root = tmp_path_factory.mktemp("fmaps")
    return {kind: simulate_dataset(root / kind, n_subjects=1, runs=("rest",), n_volumes=10,
                                   bold_voxel_size=6.0, seed=4, fieldmap=kind)
            for kind in ("phasediff", "pepolar")}


def _true_field_on(dataset: Path, image: nib.Nifti1Image) -> np.ndarray:
    """The recorded B0 field (Hz) on a field map's grid, with the head where it was."""
    from fmrilm_bids.simulate import load_subject_truth
    from fmrilm_bids.simulate.fieldmap import sample_template
    from fmrilm_bids.simulate.simulator import B0_TRUTH
    from fmrilm_bids.simulate.truth import TRUTH_DIR

    template = nib.load(dataset / TRUTH_DIR / B0_TRUTH)
    mni_to_fmap = np.asarray(load_subject_truth(dataset, "01")["fieldmap"]["mni_to_fieldmap"])
    return sample_template(np.asarray(template.dataobj), template.affine, mni_to_fmap,
                           image.affine, image.shape[:3])


@pytest.mark.slow  # the simulations take about 30 s
def test_simulated_field_maps_are_valid_and_found(simulated_maps: dict[str, Path],
                                                  tmp_path: Path) -> None:
    from fmrilm_bids.dataset.validator import validate_dataset

    for kind, dataset in simulated_maps.items():
        report = validate_dataset(dataset)
        assert report.ok, report.describe_errors(5)
        (run,) = select_runs(index_dataset(dataset, tmp_path / kind)).bold_runs
        assert run.fieldmap is not None and run.fieldmap.method == kind
        assert run.fieldmap.identifier == "b0map"  # through B0FieldIdentifier
        check_selection(select_runs(index_dataset(dataset, tmp_path / kind)))
        sidecar = json.loads(run.path.with_name(run.name + "_bold.json").read_text())
        assert sidecar["PhaseEncodingDirection"] == "j-" and sidecar["B0FieldSource"] == "b0map"
        fmap = json.loads(run.fieldmap.sources[0].with_name(
            run.fieldmap.sources[0].name.replace(".nii.gz", ".json")).read_text())
        (intent,) = fmap["IntendedFor"]
        assert resolve_intent(intent, dataset, "01") == run.path


@pytest.mark.slow  # the simulations take about 30 s
def test_simulated_phasediff_encodes_the_recorded_field(
        simulated_maps: dict[str, Path]) -> None:
    from fmrilm_bids.simulate.fieldmap import ECHO_TIMES

    fmap = simulated_maps["phasediff"] / "sub-01" / "fmap"
    phasediff = nib.load(fmap / "sub-01_phasediff.nii.gz")
    magnitude = nib.load(fmap / "sub-01_magnitude1.nii.gz").get_fdata()
    truth = _true_field_on(simulated_maps["phasediff"], phasediff)
    head = fm.magnitude_mask(magnitude)
    stored = fm.phase_to_radians(phasediff.get_fdata())
    expected = 2 * np.pi * truth * (ECHO_TIMES[1] - ECHO_TIMES[0])
    assert np.abs(expected[head]).max() > np.pi  # the strongest field wraps
    difference = np.angle(np.exp(1j * (stored - expected)))[head]
    assert np.abs(difference).max() < 0.01
    field, _ = fm.phasediff_fieldmap(phasediff.get_fdata(), magnitude, *ECHO_TIMES,
                                     phasediff.header.get_zooms()[:3])
    inner = ndimage.binary_erosion(head, iterations=2)
    assert np.abs(field - truth)[inner].mean() < 3.0  # Hz (the peak is 100 Hz)


@pytest.mark.slow  # the simulations take about 30 s
def test_simulated_epi_references_give_the_recorded_field(
        simulated_maps: dict[str, Path], tmp_path: Path) -> None:
    """The PEPOLAR node on the simulator's AP/PA references recovers the recorded field."""
    from fmrilm_bids.interfaces.fieldmap import PepolarFieldmap

    fmap = simulated_maps["pepolar"] / "sub-01" / "fmap"
    files = [fmap / "sub-01_dir-AP_epi.nii.gz", fmap / "sub-01_dir-PA_epi.nii.gz"]
    metadata = [json.loads(f.with_name(f.name.replace(".nii.gz", ".json")).read_text())
                for f in files]
    result = PepolarFieldmap(
        in_files=[str(f) for f in files], pe_axis=1, polarities=[-1, 1],
        readout_times=[m["TotalReadoutTime"] for m in metadata]).run(cwd=str(tmp_path))
    image = nib.load(result.outputs.fieldmap)
    truth = _true_field_on(simulated_maps["pepolar"], image)
    brain = nib.load(result.outputs.mask).get_fdata() > 0
    strong = brain & (np.abs(truth) > 30)
    error = np.abs(image.get_fdata() - truth)
    assert strong.sum() > 20
    assert error[brain].mean() < 5.0 and error[strong].mean() < 0.3 * np.abs(truth)[strong].mean()
