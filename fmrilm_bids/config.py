"""The settings of one fmrilm-bids run, in the spirit of fMRIPrep's ``config`` module.

A :class:`Config` is built once from the command line (and an optional ``--config-file``
TOML), passed to every workflow builder, and saved as ``config.toml`` in the log folder of
the output tree, so ``fmrilm-bids ... --config-file that/config.toml`` repeats a run exactly.

Sections:

* :class:`ExecutionConfig` -- what to run on, where to write, which data were selected;
* :class:`NipypeConfig` -- how nipype executes (plugin, processes, threads, memory);
* :class:`WorkflowConfig` -- the scientific choices (atlases, denoising, models, device);
* :class:`SeedsConfig` -- random seeds.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

ANALYSIS_LEVELS = ("participant", "group")
T = TypeVar("T")
DEVICES = ("auto", "cpu", "cuda")
#: What ``--ignore`` may leave out, as fMRIPrep's flag: field maps (no susceptibility
#: distortion correction), slice timing (no slice-timing correction), the Jacobian intensity
#: correction of the unwarping.
IGNORE_CHOICES = ("fieldmaps", "slicetiming", "fmap-jacobian")
#: The offline default output space: the bundled template (see fmrilm_bids.resources.templates).
DEFAULT_SPACE = "MNI152NLin2009aSym:res-2"
#: fMRIPrep's non-template spaces, which fmrilm-bids does not write.
NONSTANDARD_SPACES = ("T1w", "anat", "func", "bold", "run", "boldref", "sbref", "fsnative",
                      "fsaverage", "fsaverage5", "fsaverage6", "fsLR")


@dataclass(frozen=True)
class Space:
    """One output space of ``--output-spaces``, in fMRIPrep's grammar.

    ``TEMPLATE[:res-N][:cohort-C]``, e.g. ``MNI152NLin2009cAsym:res-2``; the resolution is
    TemplateFlow's ``res`` index (default 2).
    """

    template: str
    resolution: int = 2
    cohort: str | None = None

    @classmethod
    def parse(cls, text: str) -> Space:
        """Read ``TEMPLATE[:res-N][:cohort-C]``.

        Raises
        ------
        ValueError
            With what to write instead.
        """
        name, *modifiers = text.strip().split(":")
        if name in NONSTANDARD_SPACES:
            raise ValueError(f"'{text}': fmrilm-bids writes template spaces only (e.g. "
                             f"{DEFAULT_SPACE}), not {name}")
        if not name or not name.isalnum():
            raise ValueError(f"'{text}': a space is TEMPLATE[:res-N][:cohort-C], e.g. "
                             f"{DEFAULT_SPACE}")
        values: dict[str, Any] = {}
        for modifier in modifiers:
            key, _, value = modifier.partition("-")
            if key == "res" and value.isdigit() and int(value) > 0:
                values["resolution"] = int(value)
            elif key == "res" and value == "native":
                raise ValueError(f"'{text}': res-native is not supported; give a template "
                                 "resolution such as res-2")
            elif key == "cohort" and value:
                values["cohort"] = value
            else:
                raise ValueError(f"'{text}': unknown modifier '{modifier}'; use res-N "
                                 "(e.g. res-2) or cohort-C")
        return cls(template=name, **values)

    @property
    def label(self) -> str:
        """The space as written on the command line (``MNI152NLin6Asym:res-2``)."""
        cohort = f":cohort-{self.cohort}" if self.cohort else ""
        return f"{self.template}:res-{self.resolution}{cohort}"

    @property
    def entities(self) -> dict[str, str]:
        """BIDS entities of a file in this space (``space``, ``cohort``, ``res``)."""
        values = {"space": self.template, "resolution": str(self.resolution)}
        return values | ({"cohort": self.cohort} if self.cohort else {})


@dataclass
class ExecutionConfig:
    """Inputs, outputs and data selection."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    participant_label: list[str] = field(default_factory=list)
    session_label: list[str] = field(default_factory=list)
    task_id: list[str] = field(default_factory=list)
    bids_filters: dict[str, Any] = field(default_factory=dict)
    derivatives: dict[str, Path] = field(default_factory=dict)
    cache_dir: Path | None = None
    bids_database_dir: Path | None = None
    skip_bids_validation: bool = False
    strict: bool = False
    stop_on_first_crash: bool = False
    clean_workdir: bool = False
    verbosity: int = 0
    run_uuid: str = ""
    version: str = ""

    @property
    def log_dir(self) -> Path:
        """Where this run's log, config and crash files go (inside the output tree)."""
        return self.output_dir / "logs" / self.run_uuid

    @property
    def bids_cache_dir(self) -> Path:
        """Where the pybids index of the input dataset is cached when no
        ``bids_database_dir`` (``--bids-database-dir``) is given."""
        return self.work_dir / "bids_db"


@dataclass
class NipypeConfig:
    """How nipype runs the workflow."""

    plugin: str = "MultiProc"
    plugin_args: dict[str, Any] = field(default_factory=dict)
    nprocs: int = 0
    omp_nthreads: int = 0
    mem_mb: int = 0

    def resolved_plugin_args(self) -> dict[str, Any]:
        """Plugin arguments with ``--nprocs``/``--mem-mb`` applied (MultiProc only)."""
        args = dict(self.plugin_args)
        if self.plugin == "MultiProc":
            args.setdefault("n_procs", self.nprocs)
            if self.mem_mb:
                args.setdefault("memory_gb", self.mem_mb / 1024)
            args.setdefault("raise_insufficient", False)
        return args


@dataclass
class WorkflowConfig:
    """Scientific choices."""

    atlases: list[str] = field(default_factory=lambda: ["AAL3"])
    denoise_strategy: str = "24P+aCompCor"
    high_pass: float = 0.008
    fd_threshold: float = 0.5
    scrub: bool = False
    dummy_scans: int | None = None
    output_bold: bool = False
    sloppy: bool = False
    output_spaces: list[str] = field(default_factory=lambda: [DEFAULT_SPACE])
    ignore: list[str] = field(default_factory=list)
    model_dir: Path | None = None
    llm_dir: Path | None = None
    device: str = "auto"
    precision: str = "auto"
    tokenizer_steps: int | None = None
    lm_steps: int | None = None
    lm_epochs: list[float] = field(default_factory=lambda: [1.0, 2.0])
    fmri_inputs: str = "continuous"
    gradient_checkpointing: bool = False
    reference_group: str | None = None
    networks: str = "atlas"
    questions: list[str] | None = None
    zero_shot: list[str] = field(default_factory=list)
    few_shot_k: int = 2
    # Stimulus models (participant level, runs with events; fmrilm_bids.stimulus).
    stimulus_models: bool = True
    stimulus_unit: str = "auto"
    caption_column: str = "caption"
    stim_captions: Path | None = None
    stimulus_features: list[str] = field(default_factory=lambda: ["sentence"])
    encoding_cv: str = "auto"
    encoding_folds: int = 5
    decoding_folds: int = 12
    adapter_folds: int = 4
    contrastive_alignment: float = 0.0
    selectivity_top: int = 10

    def __post_init__(self) -> None:
        unknown = sorted(set(self.ignore) - set(IGNORE_CHOICES))
        if unknown:
            raise ValueError(f"ignore = {unknown}: unknown; choose among "
                             f"{', '.join(IGNORE_CHOICES)}")

    @property
    def spaces(self) -> list[Space]:
        """The output spaces; the first is the analysis space (registration target,
        confounds, parcellation, reports)."""
        return [Space.parse(text) for text in self.output_spaces]

    @property
    def template(self) -> str:
        """The analysis space's template identifier."""
        return self.spaces[0].template

    @property
    def template_resolution(self) -> int:
        """The analysis space's resolution (TemplateFlow ``res`` index)."""
        return self.spaces[0].resolution


@dataclass
class SeedsConfig:
    """Random seeds (one master seed; everything else is derived from it)."""

    master: int = 42


@dataclass
class Config:
    """All settings of one run."""

    execution: ExecutionConfig
    nipype: NipypeConfig = field(default_factory=NipypeConfig)
    workflow: WorkflowConfig = field(default_factory=WorkflowConfig)
    seeds: SeedsConfig = field(default_factory=SeedsConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain, TOML-friendly dictionary (paths as strings, ``None`` dropped)."""
        return _plain(asdict(self))

    def to_toml(self) -> str:
        """The settings as TOML, as ``config.toml`` of a run's log folder holds them."""
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        check_schema(data)
        built = {}
        for name, klass in SECTIONS.items():
            values = dict(data.get(name, {}))
            known = {f.name: f for f in fields(klass)}
            built[name] = settings_from_dict(
                klass, {k: _typed(known[k].type, v) for k, v in values.items()}, f"[{name}]")
        return cls(**built)

    @classmethod
    def load(cls, path: Path) -> Config:
        """Read a ``config.toml`` (:meth:`to_toml`)."""
        with open(path, "rb") as handle:
            return cls.from_dict(tomllib.load(handle))


#: The sections of a config file and the settings each holds.
SECTIONS: dict[str, type] = {
    "execution": ExecutionConfig,
    "nipype": NipypeConfig,
    "workflow": WorkflowConfig,
    "seeds": SeedsConfig,
}

_SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,), "bool": (bool,), "int": (int,), "float": (int, float), "Path": (str, Path),
    "Any": (object,),
}


def _matches(annotation: str, value: Any) -> bool:
    """Whether ``value`` (as read from TOML) fits the field type ``annotation``."""
    options = [part.strip() for part in annotation.split("|")]
    if "None" in options and value is None:
        return True
    for option in options:
        if option.startswith("list[") and isinstance(value, list):
            if all(_matches(option[5:-1], item) for item in value):
                return True
        elif option.startswith("dict[") and isinstance(value, dict):
            inner = option[5:-1].split(",", 1)[1].strip()
            if all(isinstance(k, str) and _matches(inner, v) for k, v in value.items()):
                return True
        elif option in _SCALARS:
            kinds = _SCALARS[option]
            if isinstance(value, kinds) and not (isinstance(value, bool)
                                                 and bool not in kinds and option != "Any"):
                return True
    return False


def check_schema(data: Any) -> None:
    """Check the shape of settings read from a config file: sections are tables, keys are
    known settings, values have the settings' types.

    Raises
    ------
    ValueError
        With one sentence saying what is wrong and how it should be written.
    """
    tables = ", ".join(f"[{name}]" for name in SECTIONS)
    if not isinstance(data, dict):
        raise ValueError(f"settings must be tables ({tables})")
    for name, values in data.items():
        if name not in SECTIONS:
            if isinstance(values, dict):
                raise ValueError(f"unknown section [{name}]; the sections are {tables}")
            raise ValueError(f"unknown top-level key '{name}'; settings go in a section "
                             f"({tables}), e.g. [workflow] then atlases = [\"AAL3\"]")
        if not isinstance(values, dict):
            raise ValueError(f"'{name}' must be a section [{name}] of settings, not "
                             f"{type(values).__name__} {values!r}")
        known = {f.name: f for f in fields(SECTIONS[name])}
        extra = sorted(set(values) - set(known))
        if extra:
            raise ValueError(f"unknown key(s) in [{name}]: {', '.join(extra)}; the keys are "
                             f"{', '.join(known)}")
        for key, value in values.items():
            if not _matches(known[key].type, value):
                raise ValueError(f"[{name}] {key} = {value!r} should be of type "
                                 f"{known[key].type}")


def settings_from_dict(cls: type[T], values: Mapping[str, Any], what: str) -> T:
    """Build the settings dataclass ``cls`` from ``values``, refusing unknown keys.

    The one reader of every settings object saved as JSON or TOML (this config, model
    folders, descriptor settings): a key this version does not know is an error, never
    silently dropped. Lists become tuples where the field is a tuple.

    Parameters
    ----------
    cls : type
        A dataclass.
    values : mapping
        Its fields, e.g. as ``dataclasses.asdict`` wrote them.
    what : str
        What these settings are, for the message (``"tokenizer"``, ``"[workflow]"``).

    Raises
    ------
    ValueError
        For keys that ``cls`` has no field for.
    """
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {', '.join(unknown)}; this fmrilm-bids "
                         f"knows {', '.join(sorted(known))}")
    return cls(**{key: tuple(value) if isinstance(value, list)
                  and str(known[key].type).startswith("tuple") else value
                  for key, value in values.items()})


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a user ``--config-file`` (TOML, sections as in :class:`Config`)."""
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _typed(annotation: str, value: Any) -> Any:
    """Turn TOML values back into the dataclass field types (paths)."""
    if value is None:
        return None
    if annotation.startswith("Path"):
        return Path(value)
    if annotation.startswith("dict[str, Path]"):
        return {k: Path(v) for k, v in value.items()}
    return value
