"""Settings of a simulation, with their defaults (the demo dataset) and their checks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from fmrilm_bids.simulate.events import MIN_TASK_RUN, TASK, BlockTiming
from fmrilm_bids.simulate.fieldmap import FIELDMAP_KINDS

#: Tasks the simulator knows: resting state, and picture viewing with captions.
TASKS = ("rest", TASK)
#: Designs of the picture task.
DESIGNS = ("event", "block")


@dataclass(frozen=True)
class SimulationConfig:
    """Every setting of a simulation; all of them are recorded in ``parameters.json``.

    Attributes
    ----------
    n_subjects : int
        Participants (``sub-01`` ...).
    runs : tuple of str
        The BOLD runs of each subject, by task (``"rest"`` or ``"images"``); a task named
        more than once gets ``run-<n>`` entities.
    n_volumes : int
        Volumes per BOLD run.
    repetition_time : float
        TR (s).
    bold_voxel_size : float
        Isotropic BOLD voxel size (mm).
    anat_resolution : int
        T1w voxel size (mm): 1 or 2 (the template resolution it is made from).
    seed : int
        Seed of every random draw.
    patient_fraction : float
        Share of participants in the ``patient`` group.
    motion_scale : float
        Multiplies head motion (0: none).
    noise_level : float
        BOLD thermal noise (standard deviation per channel) relative to the grey-matter
        baseline (0: noise-free).
    drift_level : float
        Standard deviation (%) of the linear and quadratic scanner-drift coefficients
        (0: none).
    t1w_noise_level : float
        T1w Rician noise relative to the template's intensity scale.
    t1w_bias_strength : float
        Standard deviation of the T1w log bias-field coefficients.
    bold_gain_strength : float
        Same for the static receive field of the BOLD images.
    fluctuation_range : tuple of float
        Range (% signal change) of each parcel's fluctuation standard deviation.
    task_fluctuation_scale : float
        Ongoing fluctuations during the picture task, relative to rest.
    network_coupling : float
        Share of a parcel's fluctuation that its network drives.
    default_coupling_control, default_coupling_patient : float
        The same for default-mode parcels, per group: the group effect.
    visual_amplitude, semantic_amplitude, default_deactivation, trial_noise : float
        Encoding model (% signal change; see :mod:`fmrilm_bids.simulate.encoding`).
    event_duration : float
        How long each picture is shown (s).
    task_design : {"event", "block"}
        ``"event"``: jittered single pictures; ``"block"``: ``n_blocks`` blocks of
        ``events_per_block`` same-category pictures separated by 12 s of rest
        (:class:`~fmrilm_bids.simulate.events.BlockTiming`).
    n_blocks, events_per_block : int
        Block design only.
    fieldmap : {"none", "phasediff", "pepolar"}
        ``"none"``: no susceptibility distortion. Otherwise a B0 field (blobs near the
        sinuses and the ear canals, :mod:`fmrilm_bids.simulate.fieldmap`) distorts every BOLD
        run along its phase-encoding axis (``j-``), and the field is measured by a
        phase-difference map or by two EPI references of opposite phase encoding.
    fieldmap_strength : float
        Peak off-resonance (Hz) of the field.
    """

    n_subjects: int = 4
    runs: tuple[str, ...] = ("rest", TASK)
    n_volumes: int = 120
    repetition_time: float = 2.0
    bold_voxel_size: float = 4.0
    anat_resolution: int = 2
    seed: int = 0
    patient_fraction: float = 0.5
    motion_scale: float = 1.0
    noise_level: float = 0.01
    drift_level: float = 0.4
    t1w_noise_level: float = 0.012
    t1w_bias_strength: float = 0.06
    bold_gain_strength: float = 0.04
    fluctuation_range: tuple[float, float] = (0.8, 1.4)
    task_fluctuation_scale: float = 0.7
    network_coupling: float = 0.5
    default_coupling_control: float = 0.6
    default_coupling_patient: float = 0.25
    visual_amplitude: float = 1.0
    semantic_amplitude: float = 0.8
    default_deactivation: float = -0.3
    trial_noise: float = 0.1
    event_duration: float = 3.0
    task_design: str = "event"
    n_blocks: int = 12
    events_per_block: int = 4
    fieldmap: str = "none"
    fieldmap_strength: float = 100.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs", tuple(self.runs))
        object.__setattr__(self, "fluctuation_range", tuple(self.fluctuation_range))
        problems = []
        if self.n_subjects < 1:
            problems.append(f"n_subjects must be at least 1, not {self.n_subjects}")
        if not self.runs or any(task not in TASKS for task in self.runs):
            problems.append(f"runs must name tasks among {', '.join(TASKS)}, not {self.runs}")
        if self.n_volumes < 10:
            problems.append(f"n_volumes must be at least 10, not {self.n_volumes}")
        if TASK in self.runs and self.n_volumes * self.repetition_time < MIN_TASK_RUN:
            problems.append(f"a task-{TASK} run needs at least {MIN_TASK_RUN:g} s of volumes "
                            f"(n_volumes x repetition_time) to hold an event")
        if self.task_design not in DESIGNS:
            problems.append(f"task_design must be one of {', '.join(DESIGNS)}, not "
                            f"{self.task_design!r}")
        elif self.task_design == "block" and TASK in self.runs:
            needed = self.block_timing().run_duration()
            if self.n_blocks < 1 or self.events_per_block < 1:
                problems.append("n_blocks and events_per_block must be at least 1")
            elif self.n_volumes * self.repetition_time < needed:
                problems.append(f"a block-design task-{TASK} run of {self.n_blocks} blocks "
                                f"needs {needed:g} s of volumes (n_volumes x "
                                "repetition_time)")
        if self.fieldmap not in FIELDMAP_KINDS:
            problems.append(f"fieldmap must be one of {', '.join(FIELDMAP_KINDS)}, not "
                            f"{self.fieldmap!r}")
        if not 0 <= self.fieldmap_strength <= 300:
            problems.append(f"fieldmap_strength must be 0-300 Hz, not "
                            f"{self.fieldmap_strength}")
        if not 0.3 <= self.repetition_time <= 10:
            problems.append(f"repetition_time must be 0.3-10 s, not {self.repetition_time}")
        if not 1.5 <= self.bold_voxel_size <= 10:
            problems.append(f"bold_voxel_size must be 1.5-10 mm, not {self.bold_voxel_size}")
        if self.anat_resolution not in (1, 2):
            problems.append(f"anat_resolution must be 1 or 2 mm, not {self.anat_resolution}")
        if not 0 <= self.patient_fraction <= 1:
            problems.append(f"patient_fraction must be in [0, 1], not {self.patient_fraction}")
        for name in ("network_coupling", "default_coupling_control", "default_coupling_patient"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be in [0, 1], not {getattr(self, name)}")
        for name in ("motion_scale", "noise_level", "drift_level", "t1w_noise_level",
                     "t1w_bias_strength", "bold_gain_strength", "trial_noise"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative, not {getattr(self, name)}")
        if problems:
            raise ValueError("Invalid simulation settings: " + "; ".join(problems) + ".")

    def block_timing(self) -> BlockTiming:
        """The block design's timing (``task_design="block"``)."""
        return BlockTiming(n_blocks=self.n_blocks, events_per_block=self.events_per_block,
                           duration=self.event_duration)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Names of all settings."""
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, object]:
        """The settings as JSON-ready values."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items()}

    def run_entities(self) -> list[tuple[str, int | None]]:
        """``(task, run)`` of each BOLD run; ``run`` is None for a task named once."""
        counts = {task: self.runs.count(task) for task in self.runs}
        seen: dict[str, int] = {}
        entities = []
        for task in self.runs:
            seen[task] = seen.get(task, 0) + 1
            entities.append((task, seen[task] if counts[task] > 1 else None))
        return entities
