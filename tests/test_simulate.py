"""The dataset simulator: its maths, its BIDS output, and ground truth that matches the images."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from fmrilm_bids.errors import EXIT_CANT_CREATE, OutputError
from fmrilm_bids.simulate import (
    SimulationConfig,
    load_run_truth,
    load_subject_truth,
    simulate_dataset,
)
from fmrilm_bids.simulate.anatomy import grid_points, legendre_field, load_template
from fmrilm_bids.simulate.bold import (
    BoldSource,
    Distortion,
    point_spread_sigma,
    synthesize_bold,
)
from fmrilm_bids.simulate.events import CAPTIONS, CATEGORIES, caption_pool, schedule_events
from fmrilm_bids.simulate.geometry import rigid_matrices, rigid_parameters, rotation_matrix
from fmrilm_bids.simulate.motion import simulate_motion
from fmrilm_bids.simulate.regions import NETWORKS, assign_networks, network_correlation
from fmrilm_bids.simulate.signals import (
    bandlimited_noise,
    boxcars,
    event_responses,
    interleaved_slice_order,
    network_time_courses,
    spm_hrf,
)

#: Small but complete: 2 subjects (a control and a patient), rest + picture task, 6 mm voxels.
SMALL = {"n_subjects": 2, "n_volumes": 60, "bold_voxel_size": 6.0, "seed": 7}


# --------------------------------------------------------------------------- pure maths


def test_rotation_convention() -> None:
    """Positive rot_x turns +y towards +z; rot_z is applied first (R = Rx Ry Rz)."""
    np.testing.assert_allclose(rotation_matrix(np.pi / 2, 0, 0) @ [0, 1, 0], [0, 0, 1],
                               atol=1e-12)
    np.testing.assert_allclose(rotation_matrix(0, 0, np.pi / 2) @ [1, 0, 0], [0, 1, 0],
                               atol=1e-12)
    rx, ry, rz = 0.1, -0.2, 0.3
    np.testing.assert_allclose(rotation_matrix(rx, ry, rz),
                               rotation_matrix(rx, 0, 0) @ rotation_matrix(0, ry, 0)
                               @ rotation_matrix(0, 0, rz))


def test_rigid_matrices_round_trip_and_rotate_about_the_centre() -> None:
    rng = np.random.default_rng(0)
    params = np.concatenate([rng.normal(0, 2, (20, 3)), rng.normal(0, 0.1, (20, 3))], axis=1)
    centre = np.array([10.0, -20.0, 5.0])
    matrices = rigid_matrices(params, centre)
    np.testing.assert_allclose(rigid_parameters(matrices, centre), params, atol=1e-10)
    # The centre only moves by the translation.
    moved = matrices[:, :3, :3] @ centre + matrices[:, :3, 3]
    np.testing.assert_allclose(moved, centre + params[:, :3], atol=1e-10)


def test_spm_hrf_shape() -> None:
    dt = 0.1
    hrf = spm_hrf(dt)
    assert hrf.sum() == pytest.approx(1.0)
    assert 4.5 <= np.argmax(hrf) * dt <= 5.5  # peak near 5 s
    assert hrf[int(15 / dt)] < 0  # undershoot
    assert hrf[0] == 0


def test_bandlimited_noise_stays_in_band() -> None:
    dt = 0.5
    noise = bandlimited_noise(4000, dt, 3, np.random.default_rng(1), band=(0.01, 0.1))
    np.testing.assert_allclose(noise.std(axis=0), 1.0)
    power = np.abs(np.fft.rfft(noise, axis=0)) ** 2
    freqs = np.fft.rfftfreq(4000, dt)
    in_band = (freqs >= 0.008) & (freqs <= 0.13)
    assert (power[in_band].sum(axis=0) / power.sum(axis=0)).min() > 0.9


def test_network_time_courses_have_the_requested_correlation() -> None:
    correlation = network_correlation()
    assert np.linalg.eigvalsh(correlation).min() > 0
    signals = network_time_courses(40000, 0.5, correlation, np.random.default_rng(2))
    np.testing.assert_allclose(np.corrcoef(signals.T), correlation, atol=0.12)


def test_event_responses_and_boxcars() -> None:
    dt = 0.25
    stimulus = boxcars([1.1], [2.0], 20, dt)[:, 0]
    assert stimulus.sum() * dt == pytest.approx(2.0)  # exact area despite off-grid edges
    assert stimulus[4] == pytest.approx(0.6)  # [1.0, 1.25) is 60% covered
    responses = event_responses([10.0, 200.0], [3.0, 3.0], 1000, dt)
    assert responses[:, 0].max() == pytest.approx(1.0)
    assert np.all(responses[: int(10 / dt), 0] == 0)  # causal
    assert responses[int(10 / dt) + int(5.5 / dt), 0] > 0.8  # peaks ~5-6 s after onset
    # An event near the end keeps its scale: its peak falls after the last sample.
    late = event_responses([247.0], [3.0], 1000, dt)
    assert late.max() < 1.0


def test_interleaved_slice_order() -> None:
    np.testing.assert_array_equal(interleaved_slice_order(5), [0, 3, 1, 4, 2])
    np.testing.assert_array_equal(interleaved_slice_order(4), [0, 2, 1, 3])


def test_motion_trajectory() -> None:
    motion = simulate_motion(120, np.random.default_rng(3))
    assert motion.shape == (120, 6)
    np.testing.assert_array_equal(motion[0], 0.0)  # volume 0 is the reference
    assert np.abs(motion[:, :3]).max() < 3.0  # mm
    assert np.abs(motion[:, 3:]).max() < np.deg2rad(3.0)
    assert np.all(np.abs(motion[:, :3]).max(axis=0) > 0.05)  # every parameter moves
    assert np.all(np.abs(motion[:, 3:]).max(axis=0) > np.deg2rad(0.05))
    steps = np.abs(np.diff(motion[:, :3], axis=0)).sum(axis=1)
    assert steps.max() > 5 * np.median(steps)  # a few jerks stand out of the drift
    np.testing.assert_array_equal(simulate_motion(120, np.random.default_rng(3)), motion)
    assert not simulate_motion(120, np.random.default_rng(3), motion_scale=0.0).any()


def test_event_schedule_of_a_default_run() -> None:
    config = SimulationConfig()
    for seed in range(5):
        events = schedule_events(config.n_volumes * config.repetition_time,
                                 np.random.default_rng(seed))
        assert len(events) >= 15
        onsets = np.array([e["onset"] for e in events])
        assert np.all(np.diff(onsets) >= 3.0 + 5.0 - 0.1)  # duration plus the shortest gap
        assert onsets[-1] + 3.0 <= config.n_volumes * config.repetition_time
        counts = pd.Series([e["trial_type"] for e in events]).value_counts()
        assert set(counts.index) == set(CATEGORIES)
        assert counts.max() - counts.min() <= 1
        captions = [e["caption"] for e in events]
        assert len(set(captions)) == len(captions)
        assert all(c in CAPTIONS[e["trial_type"]] for c, e in zip(captions, events, strict=True))


def test_caption_pool_is_natural_and_distinct() -> None:
    pool = caption_pool()
    assert len(CATEGORIES) >= 6
    assert all(len(CAPTIONS[c]) >= 15 for c in CATEGORIES)
    sentences = [s for _, s in pool]
    assert len(set(sentences)) == len(sentences)
    assert all(s[0].isupper() and s.endswith(".") and len(s.split()) >= 5 for s in sentences)


def test_every_aal3_region_has_a_network() -> None:
    from fmrilm_bids.resources.atlases import bundled_atlas_dir, read_label_table

    names = list(read_label_table(bundled_atlas_dir() / "AAL3.txt").values())
    networks = dict(zip(names, assign_networks(names), strict=True))
    assert set(networks.values()) == set(NETWORKS)
    assert networks["Calcarine_L"] == "Visual"
    assert networks["Precuneus_R"] == "Default"
    assert networks["Cerebellum_Crus1_L"] == "Cerebellum"
    with pytest.raises(ValueError, match="No network rule"):
        assign_networks(["Nowhere_L"])


def test_point_spread_sigma() -> None:
    assert point_spread_sigma(1.0, 2.0) == 0.0  # finer than the grid: no extra blur
    sigma = point_spread_sigma(4.0, 2.0) * 2.0
    total = np.sqrt(sigma**2 + 2.0**2 / 6)
    assert total * np.sqrt(8 * np.log(2)) == pytest.approx(4.0)


def _box_source(shape: tuple[int, int, int] = (24, 24, 24)) -> BoldSource:
    """A 2 mm template-like grid holding one cubic parcel (S0 1000, active 500)."""
    baseline = np.zeros(shape, dtype=np.float32)
    baseline[4:-4, 4:-4, 4:-4] = 1000.0
    column = (baseline > 0).astype(np.int32)
    return BoldSource(affine=np.diag([2.0, 2.0, 2.0, 1.0]), baseline=baseline,
                      active=baseline / 2, parcel_column=column)


def test_each_slice_shows_the_signal_at_its_acquisition_time() -> None:
    source = _box_source()
    bold_affine, bold_shape = np.diag([4.0, 4.0, 4.0, 1.0]), (12, 12, 12)
    n_volumes, n_slices = 3, bold_shape[2]
    signal = np.arange(n_volumes * n_slices, dtype=float)[:, None] * 0.1  # a ramp, in %
    position = interleaved_slice_order(n_slices)
    series = synthesize_bold(source, bold_affine, bold_shape, np.eye(4),
                             np.tile(np.eye(4), (n_volumes, 1, 1)), signal, position,
                             np.zeros(n_volumes), np.ones(bold_shape), 0.0,
                             np.random.default_rng(0))
    for volume in range(n_volumes):
        for k in range(3, 9):  # slices inside the parcel
            expected = 1000 + 500 * signal[volume * n_slices + position[k], 0] / 100
            assert series[6, 6, k, volume] == pytest.approx(expected, rel=1e-5)


def test_motion_moves_the_tissue_by_the_recorded_transform() -> None:
    """Tissue at rest at x is imaged at H x: a +4 mm trans_x shifts the image one voxel."""
    source = _box_source()
    bold_affine, bold_shape = np.diag([4.0, 4.0, 4.0, 1.0]), (12, 12, 12)
    motion = rigid_matrices(np.array([[0, 0, 0, 0, 0, 0], [4.0, 0, 0, 0, 0, 0]]))
    series = synthesize_bold(source, bold_affine, bold_shape, np.eye(4), motion,
                             np.zeros((2 * 12, 1)), np.arange(12), np.zeros(2),
                             np.ones(bold_shape), 0.0, np.random.default_rng(0))
    np.testing.assert_allclose(series[1:, :, :, 1], series[:-1, :, :, 0], atol=1e-3)
    assert not np.allclose(series[..., 1], series[..., 0])


def test_b0_field_shifts_and_compresses_the_image_along_phase_encoding() -> None:
    """A uniform field shifts the box by field * readout time voxels along j; a field that
    grows along j also stretches it (intensity divided by the Jacobian)."""
    source = _box_source()
    bold_affine, bold_shape = np.diag([4.0, 4.0, 4.0, 1.0]), (12, 12, 12)

    def image(field: np.ndarray, shift_per_hz: float) -> np.ndarray:
        distortion = Distortion(field=field, pe_axis=1, shift_per_hz=shift_per_hz)
        return synthesize_bold(source, bold_affine, bold_shape, np.eye(4), np.eye(4)[None],
                               np.zeros((12, 1)), np.arange(12), np.zeros(1),
                               np.ones(bold_shape), 0.0, np.random.default_rng(0),
                               distortion)[..., 0]

    still = image(np.zeros(source.baseline.shape), 0.0)
    moved = image(np.full(source.baseline.shape, 50.0), -0.04)  # -2 voxels (j-)
    np.testing.assert_allclose(moved[:, :-2], still[:, 2:], atol=1e-3)
    assert not np.allclose(moved, still)
    ramp = np.broadcast_to(((np.arange(24.0) - 12) * 2.5)[None, :, None],
                           source.baseline.shape).copy()  # Hz, along j
    stretched = image(ramp, 0.04)  # 5 Hz per BOLD voxel: d shift / dy = 0.2
    inside = stretched[6, :, 6][stretched[6, :, 6] > 1]
    assert inside.max() == pytest.approx(1000 / 1.2, rel=0.02)
    assert (stretched[6] > 1).sum() > (still[6] > 1).sum()


# --------------------------------------------------------------------- simulated datasets


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_dataset(tmp_path_factory.mktemp("sim") / "small", **SMALL)


@pytest.fixture(scope="module")
def noise_free(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No motion, noise or drift: parcel means must follow the recorded signals."""
    return simulate_dataset(tmp_path_factory.mktemp("sim") / "clean", n_subjects=1,
                            runs=("images",), n_volumes=60, seed=5, motion_scale=0.0,
                            noise_level=0.0, drift_level=0.0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _atlas_in_bold(bold: nib.Nifti1Image, mni_to_bold: np.ndarray) -> np.ndarray:
    """AAL3 labels (2 mm template) seen in the BOLD grid with the head at rest."""
    import os

    from fmrilm_bids.simulate.simulator import _atlas_labels

    atlas, _ = _atlas_labels(os.environ["TEMPLATEFLOW_HOME"])
    template = load_template(2)
    voxel_map = np.linalg.inv(template.affine) @ np.linalg.inv(mni_to_bold) @ bold.affine
    return ndimage.affine_transform(atlas * template.mask, voxel_map,
                                    output_shape=bold.shape[:3], order=0)


def test_dataset_passes_the_bids_validator(small: Path) -> None:
    from fmrilm_bids.dataset.validator import validate_dataset

    report = validate_dataset(small)
    assert report.ok, report.describe_errors(10)


def test_dataset_layout_and_metadata(small: Path) -> None:
    description = json.loads((small / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == "1.10.0"
    assert description["DatasetType"] == "raw"
    assert description["GeneratedBy"][0]["Name"] == "fmrilm-bids-simulate"
    participants = pd.read_csv(small / "participants.tsv", sep="\t")
    assert list(participants.columns) == ["participant_id", "age", "sex", "group"]
    assert participants.group.tolist() == ["control", "patient"]
    assert (small / "README.md").is_file() and (small / "participants.json").is_file()
    truth = small / "sourcedata" / "simulation"
    for name in ("README.md", "parameters.json", "parcels.tsv", "effects.json",
                 "encoding_matrix.npy", "encoding_intercept.npy", "captions.tsv",
                 "caption_embeddings.npy"):
        assert (truth / name).is_file(), name
    assert "trans_x" in (truth / "README.md").read_text()
    assert json.loads((truth / "parameters.json").read_text())["settings"]["seed"] == 7

    for sub in ("01", "02"):
        t1w = nib.load(small / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz")
        assert t1w.get_data_dtype() == np.int16 and t1w.header.get_zooms() == (2.0, 2.0, 2.0)
        for task in ("rest", "images"):
            stem = small / f"sub-{sub}" / "func" / f"sub-{sub}_task-{task}"
            bold = nib.load(f"{stem}_bold.nii.gz")
            sidecar = json.loads(Path(f"{stem}_bold.json").read_text())
            n_slices = bold.shape[2]
            assert bold.shape[3] == 60 and bold.get_data_dtype() == np.int16
            assert bold.header.get_zooms() == (6.0, 6.0, 6.0, 2.0)
            assert bold.header.get_xyzt_units() == ("mm", "sec")
            assert bold.header.get_dim_info()[2] == 2
            assert sidecar["RepetitionTime"] == 2.0 and sidecar["TaskName"] == task
            timing = np.array(sidecar["SliceTiming"])
            assert len(timing) == n_slices and timing.min() == 0 and timing.max() < 2.0
            np.testing.assert_allclose(np.sort(timing), np.arange(n_slices) * 2.0 / n_slices,
                                       atol=1e-6)
            np.testing.assert_allclose(bold.header.get_slice_times(), timing, atol=1e-5)


def test_default_dataset_has_no_field_map(small: Path) -> None:
    assert not list(small.glob("sub-*/fmap"))
    sidecar = json.loads((small / "sub-01/func/sub-01_task-rest_bold.json").read_text())
    assert "PhaseEncodingDirection" not in sidecar and "B0FieldSource" not in sidecar
    assert load_run_truth(small, "01", "rest").metadata["susceptibility"] is None


def test_same_seed_same_bytes_other_seed_other_data(small: Path, tmp_path: Path) -> None:
    again = simulate_dataset(tmp_path / "again", **SMALL)
    assert _files(again) == _files(small)
    other = simulate_dataset(tmp_path / "other", **{**SMALL, "n_subjects": 1, "seed": 8})
    for name in ("anat/sub-01_T1w.nii.gz", "func/sub-01_task-rest_bold.nii.gz"):
        assert not np.array_equal(nib.load(other / "sub-01" / name).get_fdata(),
                                  nib.load(small / "sub-01" / name).get_fdata())
    assert not load_run_truth(other, "01", "rest").motion.equals(
        load_run_truth(small, "01", "rest").motion)


def test_t1w_is_the_template_moved_by_the_recorded_affine(small: Path) -> None:
    template = load_template(2)
    for sub in ("01", "02"):
        truth = load_subject_truth(small, sub)
        t1w = nib.load(small / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz")
        bias_truth = truth["t1w_bias_field"]
        bias = legendre_field(grid_points(t1w.affine, t1w.shape),
                              np.array(bias_truth["coefficients"]),
                              np.array(bias_truth["centre_mm"]),
                              np.array(bias_truth["half_extent_mm"]))
        assert 0.1 < bias.max() - bias.min() < 1.0  # a real, but plausible, bias field
        to_subject = np.linalg.inv(t1w.affine) @ np.array(truth["mni_to_t1w"]["matrix"])
        voxel_map = to_subject @ template.affine
        correlations = {}
        for name, data in (("raw", t1w.get_fdata()), ("unbiased", t1w.get_fdata() / bias)):
            back = ndimage.affine_transform(data, voxel_map, output_shape=template.mask.shape,
                                            order=1)
            correlations[name] = np.corrcoef(back[template.mask],
                                             template.t1w[template.mask])[0, 1]
        assert correlations["unbiased"] > 0.97, correlations
        assert correlations["raw"] > 0.9, correlations
        # The recorded affine matters: the template placed without it matches far worse.
        unmoved = ndimage.affine_transform(t1w.get_fdata() / bias,
                                           np.linalg.inv(t1w.affine) @ template.affine,
                                           output_shape=template.mask.shape, order=1)
        assert np.corrcoef(unmoved[template.mask], template.t1w[template.mask])[0, 1] < (
            correlations["unbiased"] - 0.05)


def test_undoing_the_recorded_motion_realigns_the_volume(small: Path) -> None:
    truth = load_run_truth(small, "01", "rest")
    bold = nib.load(small / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz")
    data, affine = bold.get_fdata(), bold.affine
    displacement = np.abs(truth.motion[["trans_x", "trans_y", "trans_z"]].to_numpy()).sum(1)
    volume = int(np.argmax(displacement))
    assert displacement[volume] > 0.5  # mm, enough motion to see
    brain = data[..., 0] > 0.5 * data[..., 0].max() / 2
    moved = truth.motion_matrices()[volume]

    def error(matrix: np.ndarray) -> float:
        realigned = ndimage.affine_transform(data[..., volume],
                                             np.linalg.inv(affine) @ matrix @ affine, order=3)
        return float(np.abs(realigned - data[..., 0])[brain].mean())

    assert error(moved) < 0.8 * error(np.eye(4))
    assert error(moved) < 0.7 * error(np.linalg.inv(moved))  # and the direction is right
    fd = truth.motion.framewise_displacement.to_numpy()
    assert fd[0] == 0 and fd.max() > 0.2


def test_parcel_means_follow_the_recorded_signals(noise_free: Path) -> None:
    truth = load_run_truth(noise_free, "01", "images")
    bold = nib.load(noise_free / "sub-01" / "func" / "sub-01_task-images_bold.nii.gz")
    data = bold.get_fdata()
    labels = _atlas_in_bold(bold, np.array(truth.metadata["mni_to_bold"]))
    parcels = pd.read_csv(noise_free / "sourcedata" / "simulation" / "parcels.tsv", sep="\t")
    correlations = []
    for index, name in zip(parcels["index"], parcels["name"], strict=True):
        inside = labels == index
        if inside.sum() < 3:
            continue
        mean = data[inside].mean(axis=0)
        correlations.append(np.corrcoef(mean, truth.clean[name])[0, 1])
    assert len(correlations) > 100
    # Slice timing (up to one TR after the recorded volume onsets) caps this below 1.
    assert np.median(correlations) > 0.85
    assert np.quantile(correlations, 0.1) > 0.6


def test_bold_contrast_and_signal_change_are_plausible(noise_free: Path) -> None:
    truth = load_run_truth(noise_free, "01", "images")
    bold = nib.load(noise_free / "sub-01" / "func" / "sub-01_task-images_bold.nii.gz")
    mean = bold.get_fdata().mean(axis=-1)
    template = load_template(2)
    voxel_map = (np.linalg.inv(template.affine)
                 @ np.linalg.inv(np.array(truth.metadata["mni_to_bold"])) @ bold.affine)
    tissue = {name: ndimage.affine_transform(getattr(template, name), voxel_map,
                                             output_shape=bold.shape[:3], order=1)
              for name in ("gm", "wm", "csf")}
    level = {name: mean[tissue[name] > 0.6].mean() for name in tissue}
    assert level["csf"] > level["gm"] > level["wm"]  # T2*-weighted
    evoked = truth.evoked.to_numpy()
    assert 1.0 < np.abs(evoked).max() < 5.0  # % signal change
    assert 0.5 < truth.clean.to_numpy().std(axis=0).mean() < 2.0


def test_events_and_captions(small: Path) -> None:
    events = pd.read_csv(small / "sub-01" / "func" / "sub-01_task-images_events.tsv",
                         sep="\t")
    assert list(events.columns) == ["onset", "duration", "trial_type", "caption"]
    assert events.trial_type.nunique() >= 5
    truth = load_run_truth(small, "01", "images")
    assert truth.amplitudes.caption.tolist() == events.caption.tolist()
    assert truth.metadata["n_events"] == len(events)
    assert json.loads((small / "task-images_events.json").read_text())["caption"]
    # Different subjects see different picture sequences.
    other = pd.read_csv(small / "sub-02" / "func" / "sub-02_task-images_events.tsv", sep="\t")
    assert other.caption.tolist() != events.caption.tolist()


def test_amplitudes_follow_the_recorded_encoding_model(small: Path) -> None:
    folder = small / "sourcedata" / "simulation"
    weights = np.load(folder / "encoding_matrix.npy")
    intercept = np.load(folder / "encoding_intercept.npy")
    embeddings = np.load(folder / "caption_embeddings.npy")
    captions = pd.read_csv(folder / "captions.tsv", sep="\t")
    parcels = pd.read_csv(folder / "parcels.tsv", sep="\t")
    assert weights.shape == (len(parcels), 384) and embeddings.shape == (len(captions), 384)

    amplitudes = load_run_truth(small, "01", "images").amplitudes
    rows = [captions.caption.tolist().index(c) for c in amplitudes.caption]
    predicted = intercept + embeddings[rows] @ weights.T
    residual = amplitudes[parcels.name].to_numpy() - predicted
    assert 0.05 < residual.std() < 0.15  # the recorded trial noise (0.1 %)

    # The caption's category is decodable from the noise-free response pattern.
    pattern = intercept + embeddings @ weights.T
    category = captions.category.to_numpy()
    hits = 0
    for i in range(len(pattern)):
        others = np.arange(len(pattern)) != i
        centroids = {c: pattern[others & (category == c)].mean(0) for c in CATEGORIES}
        hits += max(centroids, key=lambda c: np.corrcoef(pattern[i], centroids[c])[0, 1]) == (
            category[i])
    assert hits / len(pattern) > 0.9
    # Category-selective cortex prefers its category (fusiform: faces over tools).
    fusiform = parcels.name.tolist().index("Fusiform_R")
    assert pattern[category == "faces", fusiform].mean() > pattern[
        category == "tools", fusiform].mean()


def test_group_effect_is_in_the_ground_truth(small: Path) -> None:
    effects = json.loads((small / "sourcedata" / "simulation" / "effects.json").read_text())
    effect = effects["group_effect"]
    assert effect["network"] == "Default" and effect["patient"] < effect["control"]
    parcels = pd.read_csv(small / "sourcedata" / "simulation" / "parcels.tsv", sep="\t")
    default = parcels.name[parcels.network == "Default"].tolist()
    other = parcels.name[parcels.network == "Visual"].tolist()

    def within(subject: str, names: list[str]) -> float:
        signals = load_run_truth(small, subject, "rest").clean[names].to_numpy()
        correlation = np.corrcoef(signals.T)
        return float(correlation[np.triu_indices(len(names), 1)].mean())

    control, patient = within("01", default), within("02", default)
    assert control - patient > 0.2
    assert control == pytest.approx(effect["control"], abs=0.15)
    assert patient == pytest.approx(effect["patient"], abs=0.15)
    assert abs(within("01", other) - within("02", other)) < 0.2  # other networks unchanged


def test_motion_ground_truth_format(small: Path) -> None:
    truth = load_run_truth(small, "02", "images")
    assert list(truth.motion.columns) == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y",
                                          "rot_z", "framewise_displacement"]
    assert len(truth.motion) == len(truth.clean) == len(truth.networks) == 60
    assert list(truth.networks.columns) == list(NETWORKS)
    centre = np.array(truth.metadata["motion_centre_mm"])
    bold = nib.load(small / "sub-02" / "func" / "sub-02_task-images_bold.nii.gz")
    grid_centre = bold.affine[:3, :3] @ ((np.array(bold.shape[:3]) - 1) / 2) + bold.affine[:3, 3]
    np.testing.assert_allclose(centre, grid_centre, atol=1e-4)  # the header holds float32
    np.testing.assert_allclose(
        rigid_parameters(truth.motion_matrices(), centre),
        truth.motion.iloc[:, :6].to_numpy(), atol=1e-6)
    assert truth.mni_to_scanner().shape == (60, 4, 4)


def test_subject_data_do_not_depend_on_the_number_of_subjects(small: Path,
                                                              tmp_path: Path) -> None:
    alone = simulate_dataset(tmp_path / "alone", **{**SMALL, "n_subjects": 1,
                                                     "runs": ("rest",)})
    for name in ("anat/sub-01_T1w.nii.gz", "func/sub-01_task-rest_bold.nii.gz"):
        assert (alone / "sub-01" / name).read_bytes() == (small / "sub-01" / name).read_bytes()


def test_output_folder_rules(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty") as caught:
        simulate_dataset(taken, n_subjects=1)
    assert caught.value.exit_code == EXIT_CANT_CREATE
    assert (taken / "keep.txt").read_text() == "mine"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        simulate_dataset(tmp_path / "a-file", n_subjects=1)
    with pytest.raises(TypeError, match="n_subject"):
        simulate_dataset(tmp_path / "typo", n_subject=2)
    with pytest.raises(ValueError, match="runs must name tasks"):
        simulate_dataset(tmp_path / "bad", runs=("movie",))
    with pytest.raises(ValueError, match="at least 30 s"):
        simulate_dataset(tmp_path / "short", n_volumes=12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "taken"]  # nothing left


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fmrilm_bids.simulate.cli import main

    out = tmp_path / "demo"
    tiny = ["--subjects", "1", "--runs", "rest", "images", "images", "--volumes", "16",
            "--bold-voxel-size", "8", "--seed", "2"]
    assert main([str(out), *tiny]) == 0
    assert "ground truth" in capsys.readouterr().out
    func = out / "sub-01" / "func"
    assert sorted(p.name for p in func.glob("*_bold.nii.gz")) == [
        "sub-01_task-images_run-1_bold.nii.gz", "sub-01_task-images_run-2_bold.nii.gz",
        "sub-01_task-rest_bold.nii.gz"]
    assert nib.load(func / "sub-01_task-rest_bold.nii.gz").shape[3] == 16
    # Run 2 avoids the captions of run 1.
    captions = [set(pd.read_csv(func / f"sub-01_task-images_run-{r}_events.tsv",
                                sep="\t").caption) for r in (1, 2)]
    assert not captions[0] & captions[1]

    assert main([str(out), *tiny]) == EXIT_CANT_CREATE
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(out) in error and "--overwrite" in error

    assert main([str(out), *tiny, "--seed", "3", "--overwrite"]) == 0
    assert json.loads((out / "sourcedata" / "simulation" / "parameters.json").read_text())[
        "settings"]["seed"] == 3
    assert not list(tmp_path.glob(".demo*"))  # no staging folder left behind

    with pytest.raises(SystemExit) as usage:
        main([str(tmp_path / "x"), "--runs", "movie"])
    assert usage.value.code == 2
    assert main([str(tmp_path / "y"), "--subjects", "0"]) == 2
