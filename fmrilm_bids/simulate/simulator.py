"""Assemble a simulated BIDS dataset: participants, anatomy, BOLD runs, events, ground truth.

Random draws come from independent streams keyed by ``(seed, purpose, subject, run)``, so a
subject's data do not change when more subjects are simulated or runs are appended, and the
same seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from fmrilm_bids import __version__, simulate
from fmrilm_bids.errors import OutputError
from fmrilm_bids.resources.atlases import load_atlas
from fmrilm_bids.resources.templates import get_template
from fmrilm_bids.resources.text_encoder import encode_sentences
from fmrilm_bids.simulate import events as task_events
from fmrilm_bids.simulate.anatomy import (
    BOLD_TISSUE_INTENSITY,
    T1W_SCALE,
    Pose,
    Template,
    draw_field_coefficients,
    draw_head_pose,
    draw_run_offset,
    field_frame,
    grid_points,
    legendre_field,
    load_template,
    native_grid,
    synthesize_t1w,
)
from fmrilm_bids.simulate.bold import BoldSource, Distortion, bold_source, synthesize_bold
from fmrilm_bids.simulate.config import SimulationConfig
from fmrilm_bids.simulate.encoding import EncodingModel, build_encoding_model
from fmrilm_bids.simulate.fieldmap import (
    B0_ID,
    BOLD_PE,
    ECHO_TIMES,
    EPI_DIRECTIONS,
    b0_field,
    epi_sidecar,
    phasediff_images,
    readout_time,
)
from fmrilm_bids.simulate.geometry import MOTION_PARAMETERS, grid_centre, rigid_matrices
from fmrilm_bids.simulate.motion import framewise_displacement, simulate_motion
from fmrilm_bids.simulate.regions import (
    NETWORKS,
    assign_networks,
    category_preferences,
    network_correlation,
)
from fmrilm_bids.simulate.signals import (
    bandlimited_noise,
    event_responses,
    interleaved_slice_order,
    legendre_drift,
    network_time_courses,
    parcel_fluctuations,
)
from fmrilm_bids.simulate.truth import TRUTH_DIR, run_stem, run_truth_files, subject_truth_file
from fmrilm_bids.simulate.writer import (
    write_anatomical,
    write_bold,
    write_dataset_description,
    write_events_sidecar,
    write_image,
    write_json,
    write_participants,
    write_readme,
    write_tsv,
)

ATLAS = "AAL3"
#: The BOLD signal is formed on the template at this resolution (mm).
BOLD_SOURCE_RESOLUTION = 2
#: Space (mm) between the brain and the edge of the T1w and BOLD fields of view.
T1W_MARGIN, BOLD_MARGIN = 10.0, 12.0
#: Band (Hz) of the resting-state fluctuations.
FLUCTUATION_BAND = (0.01, 0.1)
#: Embeddings are rounded to this many decimals, so tiny floating-point differences between
#: machines do not change the data.
EMBEDDING_DECIMALS = 5

REST_DESCRIPTION = "Resting state with eyes open, looking at a fixation cross."
REST_INSTRUCTIONS = "Keep your eyes on the cross, stay still and let your mind wander."

_STREAMS = {"participants": 1, "shared": 2, "anatomy": 3, "offset": 4, "motion": 5,
            "signals": 6, "events": 7, "noise": 8, "fieldmap": 9}
#: Ground-truth B0 field (Hz) on the template grid, in TRUTH_DIR (with ``fieldmap``).
B0_TRUTH = "b0field_hz.nii.gz"


def _rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[purpose], *keys])


@functools.lru_cache(maxsize=2)
def _atlas_labels(templateflow_home: str) -> tuple[np.ndarray, dict[int, str]]:

    atlas = load_atlas(ATLAS, get_template(BOLD_SOURCE_RESOLUTION, suffix="T1w"))
    return np.asarray(atlas.image.dataobj, dtype=np.int32), dict(atlas.labels)


@functools.lru_cache(maxsize=1)
def caption_embeddings() -> np.ndarray:
    """Embeddings of :func:`~fmrilm_bids.simulate.events.caption_pool`, in its order."""

    vectors = encode_sentences([caption for _, caption in task_events.caption_pool()])
    vectors = np.round(vectors, EMBEDDING_DECIMALS).astype(np.float32)
    vectors.setflags(write=False)
    return vectors


@dataclass(frozen=True)
class Parcels:
    """The atlas regions that carry signals (every label of the atlas table)."""

    labels: list[int]
    names: list[str]
    networks: list[str]
    n_voxels: np.ndarray = field(repr=False)
    fluctuation_sd: np.ndarray = field(repr=False)

    @property
    def network_index(self) -> np.ndarray:
        return np.array([NETWORKS.index(n) for n in self.networks])

    def shared_fraction(self, config: SimulationConfig, group: str) -> np.ndarray:
        default = (config.default_coupling_patient if group == "patient"
                   else config.default_coupling_control)
        return np.where(np.asarray(self.networks) == "Default", default,
                        config.network_coupling)


@dataclass(frozen=True)
class Shared:
    """What every subject shares: settings, templates, parcels, encoding model."""

    config: SimulationConfig
    anat_template: Template = field(repr=False)
    source: BoldSource = field(repr=False)
    parcels: Parcels = field(repr=False)
    encoding: EncodingModel = field(repr=False)
    embeddings: np.ndarray = field(repr=False)
    field: np.ndarray | None = field(default=None, repr=False)  # B0 (Hz), source grid


def _prepare(config: SimulationConfig) -> Shared:
    home = os.environ.get("TEMPLATEFLOW_HOME", "")
    atlas_image, label_table = _atlas_labels(home)
    bold_template = load_template(BOLD_SOURCE_RESOLUTION)
    labels, names = list(label_table), list(label_table.values())
    networks = assign_networks(names)
    in_brain = atlas_image * bold_template.mask
    counts = np.bincount(in_brain.ravel(), minlength=max(labels) + 1)[labels]
    rng = _rng(config.seed, "shared")
    fluctuation_sd = rng.uniform(*config.fluctuation_range, len(labels))
    embeddings = caption_embeddings()
    encoding = build_encoding_model(
        names, networks, embeddings, [c for c, _ in task_events.caption_pool()], rng,
        semantic_amplitude=config.semantic_amplitude, visual_amplitude=config.visual_amplitude,
        default_deactivation=config.default_deactivation)
    return Shared(config=config, anat_template=load_template(config.anat_resolution),
                  source=bold_source(bold_template, atlas_image, labels,
                                     config.bold_voxel_size),
                  parcels=Parcels(labels=labels, names=names, networks=networks,
                                  n_voxels=counts, fluctuation_sd=fluctuation_sd),
                  encoding=encoding, embeddings=embeddings,
                  field=(None if config.fieldmap == "none"
                         else b0_field(bold_template, config.fieldmap_strength)))


def _participants(config: SimulationConfig) -> pd.DataFrame:
    """Participants table; patients are spread evenly over the subject order.

    Subject ``i`` (0-based) is a patient when ``floor((i + 1) f) > floor(i f)`` with ``f``
    the patient fraction (f = 0.5: sub-02, sub-04, ...), so a subject's group, age and sex do
    not depend on how many subjects are simulated.
    """
    rows = []
    width = max(2, len(str(config.n_subjects)))
    fraction = config.patient_fraction
    for i in range(config.n_subjects):
        rng = _rng(config.seed, "participants", i)
        patient = np.floor((i + 1) * fraction + 1e-9) > np.floor(i * fraction + 1e-9)
        rows.append({"participant_id": f"sub-{i + 1:0{width}d}",
                     "age": int(rng.integers(20, 61)), "sex": str(rng.choice(["F", "M"])),
                     "group": "patient" if patient else "control"})
    return pd.DataFrame(rows, columns=["participant_id", "age", "sex", "group"])


@dataclass(frozen=True)
class Subject:
    """One participant's anatomy and scan geometry."""

    index: int
    label: str
    group: str
    mni_to_t1w: Pose
    bold_affine: np.ndarray = field(repr=False)
    bold_shape: tuple[int, ...] = ()


def _simulate_anatomy(root: Path, shared: Shared, index: int,
                      participant: pd.Series) -> Subject:
    config, template = shared.config, shared.anat_template
    label = participant["participant_id"].removeprefix("sub-")
    rng = _rng(config.seed, "anatomy", index)
    pose = draw_head_pose(rng)
    t1w_affine, t1w_shape = native_grid(template, pose.matrix, config.anat_resolution,
                                        T1W_MARGIN)
    centre, half_extent = field_frame(t1w_affine, t1w_shape)
    coefficients = draw_field_coefficients(rng, config.t1w_bias_strength)
    bias = legendre_field(grid_points(t1w_affine, t1w_shape), coefficients, centre, half_extent)
    noise_sigma = config.t1w_noise_level * T1W_SCALE
    t1w = synthesize_t1w(template, pose.matrix, t1w_affine, t1w_shape, bias, noise_sigma, rng)
    write_anatomical(root / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz", t1w, t1w_affine)
    bold_affine, bold_shape = native_grid(template, pose.matrix, config.bold_voxel_size,
                                          BOLD_MARGIN)
    write_json(root / TRUTH_DIR / subject_truth_file(label), {
        "participant_id": f"sub-{label}",
        "group": participant["group"],
        "mni_to_t1w": pose.to_dict(),
        "t1w_affine": t1w_affine.tolist(),
        "t1w_shape": list(t1w_shape),
        "t1w_bias_field": {"coefficients": coefficients.tolist(), "centre_mm": centre.tolist(),
                           "half_extent_mm": half_extent.tolist()},
        "t1w_noise_sigma": noise_sigma,
        "bold_affine": bold_affine.tolist(),
        "bold_shape": list(bold_shape),
    })
    return Subject(index=index, label=label, group=participant["group"], mni_to_t1w=pose,
                   bold_affine=bold_affine, bold_shape=bold_shape)


def _bold_distortion(shared: Shared, shape: tuple[int, ...], direction: str) -> Distortion:
    """How the B0 field distorts an EPI of ``shape`` phase-encoded along ``direction``."""
    polarity = -1 if direction.endswith("-") else 1
    return Distortion(field=shared.field, pe_axis="ijk".index(direction[0]),
                      shift_per_hz=readout_time(shape, direction) * polarity)


def _simulate_fieldmap(root: Path, shared: Shared, subject: Subject) -> dict[str, object]:
    """Write the participant's field map (``config.fieldmap``); returns its ground truth."""
    config = shared.config
    rng = _rng(config.seed, "fieldmap", subject.index)
    offset = draw_run_offset(rng)
    mni_to_fmap = offset.matrix @ subject.mni_to_t1w.matrix
    label, fmap = subject.label, root / f"sub-{subject.label}" / "fmap"
    intended = {"IntendedFor": [f"bids::sub-{label}/func/{run_stem(label, task, run)}"
                                "_bold.nii.gz" for task, run in config.run_entities()],
                "B0FieldIdentifier": B0_ID}
    noise_sigma = config.noise_level * BOLD_TISSUE_INTENSITY["GM"]
    if config.fieldmap == "phasediff":
        affine, shape = native_grid(load_template(BOLD_SOURCE_RESOLUTION), mni_to_fmap,
                                    config.bold_voxel_size, BOLD_MARGIN)
        images = phasediff_images(shared.field, shared.source.baseline,
                                  load_template(BOLD_SOURCE_RESOLUTION), mni_to_fmap, affine,
                                  shape, noise_sigma, rng)
        for suffix, image in zip(("phasediff", "magnitude1", "magnitude2"), images,
                                 strict=True):
            write_anatomical(fmap / f"sub-{label}_{suffix}.nii.gz", image, affine)
        write_json(fmap / f"sub-{label}_phasediff.json",
                   {"EchoTime1": ECHO_TIMES[0], "EchoTime2": ECHO_TIMES[1], **intended})
    else:
        affine, shape = subject.bold_affine, subject.bold_shape
        gain_centre, gain_half_extent = field_frame(affine, shape)
        gain = legendre_field(grid_points(affine, shape),
                              draw_field_coefficients(rng, config.bold_gain_strength),
                              gain_centre, gain_half_extent)
        n_slices = shape[2]
        for entity, direction in EPI_DIRECTIONS.items():
            volume = synthesize_bold(
                shared.source, affine, shape, mni_to_fmap, np.eye(4)[None],
                np.zeros((n_slices, len(shared.parcels.labels))), np.arange(n_slices),
                np.zeros(1), gain, noise_sigma, rng,
                _bold_distortion(shared, shape, direction))[..., 0]
            write_anatomical(fmap / f"sub-{label}_dir-{entity}_epi.nii.gz", volume, affine)
            write_json(fmap / f"sub-{label}_dir-{entity}_epi.json",
                       {**epi_sidecar(direction, shape), **intended})
    return {"kind": config.fieldmap, "t1w_to_fieldmap": offset.to_dict(),
            "mni_to_fieldmap": mni_to_fmap.tolist(), "affine": affine.tolist(),
            "shape": list(shape)}


def _event_table(events: list[dict[str, object]]) -> pd.DataFrame:
    return pd.DataFrame(events, columns=["onset", "duration", "trial_type", "caption"])


@dataclass(frozen=True)
class RunSignals:
    """Parcel signals of one run on the slice grid (``n_volumes * n_slices`` rows).

    ``signals`` (% change) is what the images show; ``networks`` the latent network signals;
    ``evoked`` and ``amplitudes`` (events x parcels) the stimulus-driven part (task runs).
    """

    signals: np.ndarray = field(repr=False)
    networks: np.ndarray = field(repr=False)
    shared_fraction: np.ndarray = field(repr=False)
    events: list[dict[str, object]] = field(default_factory=list)
    evoked: np.ndarray | None = field(default=None, repr=False)
    amplitudes: np.ndarray | None = field(default=None, repr=False)


def _draw_run_signals(shared: Shared, subject: Subject, task: str, keys: tuple[int, int],
                      dt: float, shown: set[str]) -> RunSignals:
    config, parcels = shared.config, shared.parcels
    n_fine = config.n_volumes * subject.bold_shape[2]
    rng = _rng(config.seed, "signals", *keys)
    networks = network_time_courses(n_fine, dt, network_correlation(), rng, FLUCTUATION_BAND)
    unique = bandlimited_noise(n_fine, dt, len(parcels.names), rng, FLUCTUATION_BAND)
    shared_fraction = parcels.shared_fraction(config, subject.group)
    signals = parcel_fluctuations(networks, parcels.network_index, shared_fraction,
                                  parcels.fluctuation_sd, unique)
    if task != task_events.TASK:
        return RunSignals(signals=signals, networks=networks, shared_fraction=shared_fraction)
    if config.task_design == "block":
        events = task_events.schedule_blocks(_rng(config.seed, "events", *keys),
                                             config.block_timing(), frozenset(shown))
    else:
        timing = task_events.EventTiming(duration=config.event_duration)
        events = task_events.schedule_events(config.n_volumes * config.repetition_time,
                                             _rng(config.seed, "events", *keys), timing,
                                             frozenset(shown))
    shown.update(e["caption"] for e in events)
    pool = [caption for _, caption in task_events.caption_pool()]
    embeddings = shared.embeddings[[pool.index(e["caption"]) for e in events]]
    amplitudes = shared.encoding.amplitudes(embeddings)
    amplitudes += rng.normal(0.0, config.trial_noise, amplitudes.shape)
    evoked = event_responses([e["onset"] for e in events], [e["duration"] for e in events],
                             n_fine, dt) @ amplitudes
    return RunSignals(signals=signals * config.task_fluctuation_scale + evoked,
                      networks=networks, shared_fraction=shared_fraction, events=events,
                      evoked=evoked, amplitudes=amplitudes)


def _bold_sidecar(task: str, slice_timing: list[float], tr: float,
                  phase_encoding: dict[str, object] | None = None) -> dict[str, object]:
    sidecar: dict[str, object] = {
        "TaskName": task, "RepetitionTime": tr, "SliceTiming": slice_timing,
        "SliceEncodingDirection": "k", "EchoTime": 0.03, "FlipAngle": 77,
        "MagneticFieldStrength": 3, **(phase_encoding or {})}
    if task == task_events.TASK:
        return sidecar | {"TaskDescription": task_events.TASK_DESCRIPTION,
                          "Instructions": task_events.INSTRUCTIONS}
    return sidecar | {"TaskDescription": REST_DESCRIPTION, "Instructions": REST_INSTRUCTIONS}


def _simulate_run(root: Path, shared: Shared, subject: Subject, run_index: int, task: str,
                  run: int | None, shown: set[str]) -> None:
    config, parcels = shared.config, shared.parcels
    keys = (subject.index, run_index)
    tr, n_volumes, n_slices = config.repetition_time, config.n_volumes, subject.bold_shape[2]
    dt = tr / n_slices
    slice_position = interleaved_slice_order(n_slices)
    slice_timing = [round(float(p) * dt, 6) for p in slice_position]

    offset = draw_run_offset(_rng(config.seed, "offset", *keys))
    mni_to_bold = offset.matrix @ subject.mni_to_t1w.matrix
    motion = simulate_motion(n_volumes, _rng(config.seed, "motion", *keys), config.motion_scale)
    motion_centre = grid_centre(subject.bold_affine, subject.bold_shape)
    run_signals = _draw_run_signals(shared, subject, task, keys, dt, shown)

    noise_rng = _rng(config.seed, "noise", *keys)
    drift_coefficients = noise_rng.normal(0.0, config.drift_level, 2)
    gain_coefficients = draw_field_coefficients(noise_rng, config.bold_gain_strength)
    gain_centre, gain_half_extent = field_frame(subject.bold_affine, subject.bold_shape)
    gain = legendre_field(grid_points(subject.bold_affine, subject.bold_shape),
                          gain_coefficients, gain_centre, gain_half_extent)
    noise_sigma = config.noise_level * BOLD_TISSUE_INTENSITY["GM"]
    distortion = phase_encoding = None
    if shared.field is not None:
        distortion = _bold_distortion(shared, subject.bold_shape, BOLD_PE)
        phase_encoding = {**epi_sidecar(BOLD_PE, subject.bold_shape), "B0FieldSource": B0_ID}
    series = synthesize_bold(shared.source, subject.bold_affine, subject.bold_shape,
                             mni_to_bold, rigid_matrices(motion, motion_centre),
                             run_signals.signals, slice_position,
                             legendre_drift(n_volumes, drift_coefficients), gain, noise_sigma,
                             noise_rng, distortion)

    stem = run_stem(subject.label, task, run)
    func = root / f"sub-{subject.label}" / "func"
    write_bold(func / f"{stem}_bold.nii.gz", series, subject.bold_affine, tr, slice_timing)
    write_json(func / f"{stem}_bold.json",
               _bold_sidecar(task, slice_timing, tr, phase_encoding))
    if task == task_events.TASK:
        write_tsv(func / f"{stem}_events.tsv", _event_table(run_signals.events))

    truth = {key: root / TRUTH_DIR / path
             for key, path in run_truth_files(subject.label, task, run).items()}
    at_volumes = slice(0, n_volumes * n_slices, n_slices)
    motion_table = pd.DataFrame(motion, columns=list(MOTION_PARAMETERS))
    motion_table["framewise_displacement"] = framewise_displacement(motion)
    write_tsv(truth["motion"], motion_table)
    write_tsv(truth["clean"], pd.DataFrame(run_signals.signals[at_volumes],
                                           columns=parcels.names))
    write_tsv(truth["networks"], pd.DataFrame(run_signals.networks[at_volumes],
                                              columns=list(NETWORKS)))
    if run_signals.evoked is not None:
        write_tsv(truth["evoked"], pd.DataFrame(run_signals.evoked[at_volumes],
                                                columns=parcels.names))
        write_tsv(truth["amplitudes"], pd.concat(
            [_event_table(run_signals.events),
             pd.DataFrame(run_signals.amplitudes, columns=parcels.names)], axis=1))
    default = np.asarray(parcels.networks) == "Default"
    write_json(truth["metadata"], {
        "participant_id": f"sub-{subject.label}",
        "task": task,
        "run": run,
        "group": subject.group,
        "repetition_time": tr,
        "n_volumes": n_volumes,
        "slice_timing": slice_timing,
        "slice_order": "ascending interleaved: slices 0, 2, 4, ... then 1, 3, 5, ... "
                       "(0-based, along the third voxel axis)",
        "signal_step_s": dt,
        "t1w_to_bold": offset.to_dict(),
        "mni_to_bold": mni_to_bold.tolist(),
        "motion_centre_mm": motion_centre.tolist(),
        "bold_affine": subject.bold_affine.tolist(),
        "bold_shape": [*subject.bold_shape, n_volumes],
        "noise_sigma": noise_sigma,
        "drift_percent_legendre": drift_coefficients.tolist(),
        "receive_field": {"coefficients": gain_coefficients.tolist(),
                          "centre_mm": gain_centre.tolist(),
                          "half_extent_mm": gain_half_extent.tolist()},
        "fluctuation_scale": (config.task_fluctuation_scale if task == task_events.TASK
                              else 1.0),
        "default_shared_fraction": float(run_signals.shared_fraction[default][0]),
        "n_events": len(run_signals.events),
        "susceptibility": None if distortion is None else {
            "field_hz": B0_TRUTH, "PhaseEncodingDirection": BOLD_PE,
            "TotalReadoutTime": readout_time(subject.bold_shape, BOLD_PE),
            "shift": "tissue at BOLD voxel y appears at y + field * TotalReadoutTime * "
                     "polarity along the phase-encoding axis (voxels), its intensity divided "
                     "by 1 + the derivative of that shift"},
    })


def _write_shared_truth(root: Path, shared: Shared) -> None:
    config, parcels, encoding = shared.config, shared.parcels, shared.encoding
    folder = root / TRUTH_DIR
    prefers = category_preferences(parcels.names, task_events.CATEGORIES)
    write_tsv(folder / "parcels.tsv", pd.DataFrame({
        "index": parcels.labels,
        "name": parcels.names,
        "network": parcels.networks,
        "n_voxels": parcels.n_voxels,
        "fluctuation_sd": parcels.fluctuation_sd,
        "shared_fraction_control": parcels.shared_fraction(config, "control"),
        "shared_fraction_patient": parcels.shared_fraction(config, "patient"),
        "selectivity": encoding.selectivity,
        "preferred_categories": [",".join(c for c, p in zip(task_events.CATEGORIES, row,
                                                            strict=True) if p) or "n/a"
                                 for row in prefers],
    }))
    pool = task_events.caption_pool()
    write_tsv(folder / "captions.tsv", pd.DataFrame(
        {"caption_id": range(len(pool)), "category": [c for c, _ in pool],
         "caption": [s for _, s in pool]}))
    np.save(folder / "caption_embeddings.npy", shared.embeddings)
    np.save(folder / "encoding_matrix.npy", encoding.weights)
    np.save(folder / "encoding_intercept.npy", encoding.intercept)
    if shared.field is not None:
        write_image(folder / B0_TRUTH, shared.field, shared.source.affine)
    correlation = network_correlation()
    write_json(folder / "effects.json", {
        "group_effect": {
            "network": "Default",
            "parameter": "shared_fraction",
            "control": config.default_coupling_control,
            "patient": config.default_coupling_patient,
            "other_networks": config.network_coupling,
            "expected_within_network_correlation": {
                "control": config.default_coupling_control,
                "patient": config.default_coupling_patient},
            "description": "Share of each default-mode parcel's fluctuation driven by the "
                           "default-mode latent signal; two default-mode parcels correlate "
                           "by this share, so patients have weaker default-mode coupling.",
        },
        "network_correlation": {"networks": list(NETWORKS), "matrix": correlation.tolist()},
        "fluctuation_band_hz": list(FLUCTUATION_BAND),
        "hrf": {"model": "SPM canonical double gamma", "peak_shape": 6.0,
                "undershoot_shape": 16.0, "undershoot_ratio": 1 / 6,
                "amplitude": "peak % signal change of each event's isolated response"},
        "encoding": {"weights": "encoding_matrix.npy", "intercept": "encoding_intercept.npy",
                     "embeddings": "caption_embeddings.npy (rows of captions.tsv)",
                     "text_encoder": "sentence-transformers/all-MiniLM-L6-v2",
                     "formula": "amplitude = intercept + weights @ embedding + "
                                "N(0, trial_noise)",
                     "visual_amplitude": config.visual_amplitude,
                     "semantic_amplitude": config.semantic_amplitude,
                     "default_deactivation": config.default_deactivation,
                     "trial_noise": config.trial_noise},
    })
    write_json(folder / "parameters.json", {
        "generator": "fmrilm-bids-simulate", "version": __version__,
        "settings": config.to_dict(),
        "template": "MNI152NLin2009aSym", "atlas": ATLAS,
        "bold_source_resolution_mm": BOLD_SOURCE_RESOLUTION,
        "bold_tissue_intensity": BOLD_TISSUE_INTENSITY, "t1w_scale": T1W_SCALE,
        "t1w_margin_mm": T1W_MARGIN, "bold_margin_mm": BOLD_MARGIN,
        "embedding_decimals": EMBEDDING_DECIMALS,
    })


def _dataset_readme(config: SimulationConfig) -> str:
    return (
        "# fmrilm-bids simulated dataset\n\n"
        "Simulated fMRI made by `fmrilm-bids-simulate` for demonstrations and tests of "
        "fmrilm-bids. None of it comes from a person.\n\n"
        f"- {config.n_subjects} participants (controls and patients, see participants.tsv)\n"
        f"- runs per participant: {', '.join(f'task-{t}' for t in config.runs)}; "
        f"{config.n_volumes} volumes each, TR {config.repetition_time:g} s, "
        f"{config.bold_voxel_size:g} mm voxels, interleaved slices\n"
        f"- a T1w image per participant ({config.anat_resolution} mm)\n\n"
        "In `task-images`, participants view natural pictures; each event's `caption` "
        "describes the picture and drives the brain response through its meaning.\n\n"
        "The ground truth (head motion, parcel signals, networks, transforms, group effect, "
        "encoding model) is in `sourcedata/simulation/`, documented in its README.md. "
        f"Settings: seed {config.seed}.\n"
    )


def _truth_readme(config: SimulationConfig) -> str:

    settings = "\n".join(f"- `{k}`: {v}" for k, v in config.to_dict().items())
    return f"{simulate.__doc__.strip()}\n\n## Settings of this dataset\n\n{settings}\n"


def _write_dataset(root: Path, config: SimulationConfig) -> None:
    shared = _prepare(config)
    participants = _participants(config)
    write_dataset_description(root, __version__)
    write_readme(root, _dataset_readme(config))
    write_participants(root, participants)
    if task_events.TASK in config.runs:
        write_events_sidecar(root, task_events.TASK, task_events.CATEGORIES)
    _write_shared_truth(root, shared)
    (root / TRUTH_DIR / "README.md").write_text(_truth_readme(config), encoding="utf-8")
    for index, participant in participants.iterrows():
        subject = _simulate_anatomy(root, shared, int(index), participant)
        if shared.field is not None:
            truth_file = root / TRUTH_DIR / subject_truth_file(subject.label)
            truth = json.loads(truth_file.read_text())
            truth["fieldmap"] = _simulate_fieldmap(root, shared, subject)
            write_json(truth_file, truth)
        shown: set[str] = set()
        for run_index, (task, run) in enumerate(config.run_entities()):
            _simulate_run(root, shared, subject, run_index, task, run, shown)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: is a file; choose a folder path for the dataset.")
    if out_dir.exists() and not overwrite and not _is_empty_dir(out_dir):
        raise OutputError(f"{out_dir}: exists and is not empty; choose a new OUT_DIR or pass "
                          "--overwrite (overwrite=True) to replace it.")


def simulate_dataset(out_dir: str | Path, config: SimulationConfig | None = None, *,
                     overwrite: bool = False, **settings: object) -> Path:
    """Write a simulated BIDS dataset, with its ground truth, to ``out_dir``.

    The dataset is built in a temporary sibling folder and moved into place at the end, so
    ``out_dir`` never holds a half-written dataset.

    Parameters
    ----------
    out_dir : str or Path
        Where the dataset goes; it must not exist, or be empty (see ``overwrite``).
    config : SimulationConfig, optional
        Settings; the defaults make the demo dataset.
    overwrite : bool, default=False
        Replace an existing, non-empty ``out_dir``.
    **settings
        Any :class:`SimulationConfig` field (``n_subjects=2``, ``seed=3``, ``n_volumes=40``,
        ``motion_scale=0``, ...), overriding ``config``.

    Returns
    -------
    Path
        The dataset root (absolute).

    Raises
    ------
    fmrilm_bids.errors.OutputError
        ``out_dir`` is a file, or a non-empty folder and ``overwrite`` is False.
    TypeError
        An unknown setting.
    ValueError
        A setting out of range.
    """
    unknown = sorted(set(settings) - set(SimulationConfig.names()))
    if unknown:
        raise TypeError(f"Unknown simulation setting(s): {', '.join(unknown)}; known: "
                        f"{', '.join(SimulationConfig.names())}.")
    config = replace(config or SimulationConfig(), **settings)
    out_dir = Path(out_dir).expanduser().absolute()
    _check_destination(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        staging.mkdir()
        _write_dataset(staging, config)
        if out_dir.exists():
            _check_destination(out_dir, overwrite)
            old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
            out_dir.rename(old)
            staging.rename(out_dir)
            shutil.rmtree(old)
        else:
            staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
