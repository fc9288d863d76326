"""Unit tests of the preprocessing maths (no nipype): motion, slice timing, resampling,
confounds, denoising, parcellation, registration helpers and the report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from fmrilm_bids.preproc import confounds, denoise, motion, parcellation, resampling
from fmrilm_bids.preproc.slice_timing import slice_time_correct, slice_time_reference
from fmrilm_bids.reports.figures import figure_uri
from fmrilm_bids.reports.html import render_report, section


def _oblique_affine(zooms=(3.0, 3.0, 4.0), angles=(0.2, -0.1, 0.15), flip_x=True):
    affine = np.eye(4)
    scale = np.diag(zooms) @ np.diag([-1.0 if flip_x else 1.0, 1, 1])
    affine[:3, :3] = motion.rotation_matrix(np.array(angles)) @ scale
    affine[:3, 3] = [40.0, -50.0, -30.0]
    return affine


def _blobby_volume(shape=(32, 36, 24), seed=0):
    rng = np.random.default_rng(seed)
    volume = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    grid = np.indices(shape) - (np.array(shape) - 1)[:, None, None, None] / 2
    head = (((grid / (np.array(shape)[:, None, None, None] / 2.6)) ** 2).sum(0) < 1)
    return (1000 + 4000 * volume) * head


def _move(volume, affine, matrix, order=3):
    """Image of the head after it moved by ``matrix`` (reference x is at matrix @ x)."""
    points = np.indices(volume.shape, dtype=float).reshape(3, -1).T
    world = points @ affine[:3, :3].T + affine[:3, 3]
    values, _ = resampling.resample_series(volume[..., None], affine, world,
                                           np.linalg.inv(matrix)[None], order=order)
    return values[:, 0].reshape(volume.shape)


def test_rigid_parameters_round_trip():
    centre = np.array([3.0, -20.0, 12.0])
    params = np.array([1.5, -0.7, 2.2, 0.05, -0.03, 0.08])
    matrix = motion.params_to_matrix(params, centre)
    assert np.allclose(matrix[:3, :3] @ matrix[:3, :3].T, np.eye(3))
    assert np.allclose(motion.matrix_to_params(matrix, centre), params)
    # The rotation is about the centre: the centre only moves by the translation.
    assert np.allclose(matrix @ [*centre, 1], [*(centre + params[:3]), 1])


def test_framewise_displacement_power():
    params = np.zeros((3, 6))
    params[1] = [0.1, -0.2, 0.0, 0.001, 0.0, -0.002]
    fd = motion.framewise_displacement(params)
    assert np.isnan(fd[0])
    assert fd[1] == pytest.approx(0.3 + 50 * 0.003)
    assert fd[2] == pytest.approx(fd[1])


def test_realign_recovers_rigid_motion_on_oblique_anisotropic_grid():
    affine = _oblique_affine()
    reference = _blobby_volume()
    centre = affine[:3, :3] @ ((np.array(reference.shape) - 1) / 2) + affine[:3, 3]
    truth = np.array([[0, 0, 0, 0, 0, 0], [1.2, -0.8, 0.5, 0.02, -0.01, 0.015],
                      [-0.6, 1.5, -1.0, -0.015, 0.025, -0.02]])
    data = np.stack([_move(reference, affine, motion.params_to_matrix(p, centre))
                     for p in truth], axis=-1)
    result = motion.realign(data, affine, reference)
    assert np.allclose(result.center, centre)
    assert np.abs(result.params[:, :3] - truth[:, :3]).max() < 0.1  # mm
    assert np.abs(result.params[:, 3:] - truth[:, 3:]).max() < 0.002  # rad (0.1 deg)


def test_resample_series_identity_and_field_of_view():
    affine = _oblique_affine()
    volume = _blobby_volume()
    ijk = np.array([[5, 6, 7], [10, 20, 12], [0, 0, 0]], dtype=float)
    points = ijk @ affine[:3, :3].T + affine[:3, 3]
    outside = affine[:3, :3] @ np.array([-3.0, 5, 5]) + affine[:3, 3]
    values, inside = resampling.resample_series(
        volume[..., None], affine, np.vstack([points, outside]))
    expected = volume[tuple(ijk.astype(int).T)]
    assert np.allclose(values[:3, 0], expected, atol=1e-2)
    assert inside.tolist() == [True, True, True, False]
    assert values[3, 0] == 0


def test_slice_time_correct_shifts_to_the_reference_time():
    tr, n = 2.0, 80
    times = np.array([0.0, 1.0, 0.5, 1.5])  # interleaved, 4 slices
    freq = 0.04
    onsets = np.arange(n) * tr
    data = np.empty((2, 2, 4, n), dtype=np.float32)
    for k, offset in enumerate(times):
        data[:, :, k] = np.sin(2 * np.pi * freq * (onsets + offset))
    corrected = slice_time_correct(data, times, tr)
    reference = slice_time_reference(times)
    assert reference == pytest.approx(0.75)
    expected = np.sin(2 * np.pi * freq * (onsets + reference))
    for k in range(4):
        assert np.abs(corrected[0, 0, k, 2:-2] - expected[2:-2]).max() < 5e-3
    # "k-": SliceTiming lists slices from the last index; slice 3 is then acquired at 0 s.
    reversed_corrected = slice_time_correct(data[:, :, ::-1], times, tr, "k-")
    assert np.allclose(reversed_corrected[:, :, ::-1], corrected, atol=1e-5)


def test_slice_time_correct_rejects_wrong_slice_count():
    with pytest.raises(ValueError, match="SliceTiming has 3 values"):
        slice_time_correct(np.zeros((2, 2, 4, 10)), [0, 0.5, 1.0], 2.0)


def test_detect_non_steady_state():
    rng = np.random.default_rng(1)
    signal = 1000 + rng.normal(0, 2, 100)
    assert confounds.detect_non_steady_state(signal) == 0
    signal[:3] = [1600, 1300, 1100]
    assert confounds.detect_non_steady_state(signal) == 3


def test_cosine_basis_is_orthonormal_and_sized_by_cutoff():
    basis = confounds.cosine_basis(200, 2.0, 0.008)
    assert basis.shape == (200, 6)  # floor(2 * 200 * 2 * 0.008) = 6
    assert np.allclose(basis.T @ basis, np.eye(6), atol=1e-10)
    assert confounds.cosine_basis(10, 2.0, 0.008).shape == (10, 0)


def test_dvars_flags_a_spike():
    rng = np.random.default_rng(2)
    series = 500 + rng.normal(0, 5, (300, 50))
    series[:, 30] += 40  # one corrupted volume: large differences into and out of it
    raw, std = confounds.dvars(series)
    assert np.isnan(raw[0]) and np.isnan(std[0])
    assert set(np.argsort(np.nan_to_num(std))[-2:]) == {30, 31}
    assert np.nanmedian(std) == pytest.approx(1.0, abs=0.15)


def test_confounds_table_columns_follow_fmriprep():
    rng = np.random.default_rng(3)
    n = 60
    params = np.cumsum(rng.normal(0, 0.05, (n, 6)), axis=0)
    brain = 800 + rng.normal(0, 5, (500, n))
    noise_rois = 600 + rng.normal(0, 5, (200, n)) + np.sin(np.arange(n) / 3.0) * 20
    table, meta = confounds.confounds_table(
        params, brain, {"white_matter": noise_rois[:100], "csf": noise_rois[100:]},
        noise_rois, repetition_time=2.0, high_pass=0.008, n_dummy=2)
    assert len(table) == n
    for column in ("trans_x", "rot_z_derivative1_power2", "framewise_displacement", "dvars",
                   "std_dvars", "global_signal", "white_matter_power2", "csf",
                   "a_comp_cor_00", "non_steady_state_outlier_00",
                   "non_steady_state_outlier_01"):
        assert column in table
    assert table["non_steady_state_outlier_01"].tolist()[:3] == [0, 1, 0]
    compcor = [c for c in table if c.startswith("a_comp_cor")]
    assert meta[compcor[-1]]["CumulativeVarianceExplained"] >= confounds.COMPCOR_VARIANCE
    assert np.all(table[compcor].to_numpy()[:2] == 0)  # dummies left out
    assert meta["trans_x"]["Units"] == "mm"


def _table(n=100, seed=4):
    rng = np.random.default_rng(seed)
    columns = {}
    for name in [*motion.MOTION_COLUMNS, "global_signal", "white_matter", "csf"]:
        columns[name] = rng.normal(size=n)
    base = pd.DataFrame(columns)
    table = confounds.expand(base, list(base.columns))
    for k in range(7):
        table[f"a_comp_cor_{k:02d}"] = rng.normal(size=n)
    table["framewise_displacement"] = np.abs(rng.normal(0, 0.1, n))
    return table


@pytest.mark.parametrize(("name", "n_columns"), [("24P+aCompCor", 29), ("24P", 24),
                                                   ("36P", 36), ("6P", 6),
                                                   ("24P+aCompCor+GSR", 33)])
def test_strategies_select_documented_regressors(name, n_columns):
    selected = denoise.select_confounds(_table(), denoise.get_strategy(name))
    assert selected.shape[1] == n_columns
    assert not selected.isna().any().any()


def test_compcor_prefers_the_combined_mask_components():
    table = _table()
    meta = {f"a_comp_cor_{k:02d}": {"Mask": "CSF" if k < 2 else "combined"} for k in range(7)}
    selected = denoise.select_confounds(table, denoise.get_strategy("24P+aCompCor"), meta)
    assert [c for c in selected if c.startswith("a_comp")] == [
        f"a_comp_cor_{k:02d}" for k in range(2, 7)]


def test_unknown_strategy_and_missing_columns_fail_clearly():
    with pytest.raises(ValueError, match="Unknown denoising strategy"):
        denoise.get_strategy("nope")
    with pytest.raises(ValueError, match="lacks the column"):
        denoise.select_confounds(_table().drop(columns=["csf"]), denoise.get_strategy("36P"))


def test_censoring_drops_high_motion_and_short_segments():
    fd = np.zeros(30)
    fd[[10, 14]] = 1.0  # volumes 11-13 become a 3-volume segment: censored too
    assert denoise.censored_volumes(fd, 0.5) == [10, 11, 12, 13, 14]
    assert denoise.censored_volumes(fd, 0.5, start=12) == [12, 13, 14]


def test_non_steady_state_count_from_table_or_setting():
    table = _table(20)
    assert denoise.non_steady_state_count(table) == 0
    table["non_steady_state_outlier_00"] = np.eye(20)[0]
    table["non_steady_state_outlier_01"] = np.eye(20)[1]
    assert denoise.non_steady_state_count(table) == 2
    assert denoise.non_steady_state_count(table, dummy_scans=4) == 4


def test_clean_signals_removes_a_confound_and_censors():
    rng = np.random.default_rng(5)
    n = 200
    table = _table(n)
    truth = rng.normal(size=(n, 3))
    signals = truth + 5 * table[["trans_x"]].to_numpy() + 3 * table[["a_comp_cor_01"]].to_numpy()
    keep = np.arange(2, n)
    cleaned = denoise.clean_signals(
        signals, denoise.select_confounds(table, denoise.get_strategy("24P+aCompCor")),
        2.0, 0.008, keep)
    assert cleaned.shape == (n - 2, 3)
    for k in range(3):
        assert np.corrcoef(signals[2:, k], truth[2:, k])[0, 1] < 0.3
        # 36 regressors (random here) on 198 volumes: r ~ sqrt(1 - 36/198) = 0.9.
        assert np.corrcoef(cleaned[:, k], truth[2:, k])[0, 1] > 0.85
    assert np.allclose(cleaned.mean(axis=0), 0, atol=1e-8)


def test_parcel_signals_means_and_missing_labels():
    values = np.array([[1.0, 2], [3, 4], [10, 20], [7, 7]])
    labels = np.array([1, 1, 3, 0])
    result = parcellation.parcel_signals(values, labels, [3, 1, 2])
    assert result.present == [3, 1]
    assert result.missing == [2]
    assert result.voxels == [1, 2]
    assert np.allclose(result.signals, [[10, 2], [20, 3]])


def test_itk_affine_to_ras(tmp_path):
    import ants

    from fmrilm_bids.preproc.registration import itk_affine_to_ras

    lps_matrix = motion.params_to_matrix([2.0, -3.0, 4.0, 0.1, -0.05, 0.2], [0, 0, 0])
    transform = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3,
        matrix=lps_matrix[:3, :3], offset=lps_matrix[:3, 3])
    ants.write_transform(transform, str(tmp_path / "x.mat"))
    flip = np.diag([-1.0, -1, 1, 1])
    ras = itk_affine_to_ras(tmp_path / "x.mat")
    assert np.allclose(ras, flip @ lps_matrix @ flip, atol=1e-6)
    point = np.array([10.0, 20.0, 30.0])
    moved_lps = transform.apply_to_point(tuple(point * [-1, -1, 1]))
    assert np.allclose((ras @ [*point, 1])[:3], np.array(moved_lps) * [-1, -1, 1], atol=1e-6)


def test_render_report_is_self_contained():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = plt.figure()
    plt.plot([0, 1])
    html = render_report("sub-01", [section(
        "BOLD run x", ["a <paragraph>"], [("caption", figure_uri(figure))],
        [("Metrics", ["task", "accuracy"], [["sex", 0.8125], ["age<bin>", 0.5]])])])
    assert "<h1>fmrilm-bids report: sub-01</h1>" in html
    assert 'src="data:image/png;base64,' in html
    assert "<td>sex</td><td>0.812</td>" in html and "<td>age&lt;bin&gt;</td>" in html
    assert "a &lt;paragraph&gt;" in html
    assert "nilearn" in html and "antspyx" in html
    assert "http" not in html.split("<body>")[1]


def test_report_sections_hold_numpy_cells_as_json() -> None:
    """Sections are saved as JSON parts (the subject report is assembled from them): numpy
    scalars in table rows (tokens, counts) must not stop that."""
    import json

    import numpy as np

    from fmrilm_bids.reports.html import render_report, section

    part = section("Run", tables=[("tokens", ["onset", "token"],
                                   [[np.float64(0.0), np.int64(3)], [12.0, np.int32(7)]])])
    assert json.loads(json.dumps(part))["tables"][0]["rows"] == [[0.0, 3], [12.0, 7]]
    assert "<td>3</td>" in render_report("sub-01", [part])
