"""Index the input dataset once (pybids) and resolve which BOLD runs a run works on.

By default the pybids index is cached in the work dir, keyed by a fingerprint of the dataset
(paths, sizes and modification times), so an unchanged dataset is indexed once and a changed
one is re-indexed (:func:`index_dataset`). With ``--bids-database-dir DIR`` the index in
``DIR`` is reused as it is, without walking the dataset, as fMRIPrep does: the first run
builds it there, every later run (e.g. the jobs of a cluster array) only opens it
(:func:`reuse_index`). Building an index is guarded by a file lock and published with an
atomic rename, so runs started at once share one index safely.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bids.exceptions import BIDSValidationError
from bids.layout import BIDSLayout, BIDSLayoutIndexer
from filelock import FileLock
from sqlalchemy.exc import SQLAlchemyError

from fmrilm_bids.dataset.fieldmaps import Fieldmap, find_fieldmaps
from fmrilm_bids.errors import InputDataError, MissingInputError

LOGGER = logging.getLogger(__name__)

#: Folders pybids does not index (BIDS says they hold no raw data).
IGNORED_FOLDERS = ("code", "derivatives", "sourcedata", "stimuli", "models", "logs")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
#: The file that makes a folder a pybids index.
INDEX_FILE = "layout_index.sqlite"


@dataclass(frozen=True)
class BoldRun:
    """One BOLD run, its metadata (BIDS inheritance applied), its events file and the field
    map that corrects its susceptibility distortions (None: not corrected)."""

    path: Path
    subject: str
    task: str
    session: str | None = None
    run: int | None = None
    acquisition: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    events: Path | None = None
    fieldmap: Fieldmap | None = field(default=None, hash=False, compare=False)

    @property
    def entities(self) -> dict[str, Any]:
        """BIDS entities of the run, without the ``None`` ones."""
        values = {
            "subject": self.subject,
            "session": self.session,
            "task": self.task,
            "acquisition": self.acquisition,
            "run": self.run,
        }
        return {k: v for k, v in values.items() if v is not None}

    @property
    def name(self) -> str:
        """The file name without ``_bold.nii[.gz]``, e.g. ``sub-01_task-rest_run-1``."""
        return self.path.name.split("_bold.nii")[0]

    @property
    def repetition_time(self) -> float:
        return float(self.metadata["RepetitionTime"])


@dataclass(frozen=True)
class SubjectSelection:
    """What one participant contributes: anatomical images and BOLD runs."""

    subject: str
    t1w: tuple[Path, ...]
    bold: tuple[BoldRun, ...]

    @property
    def sessions(self) -> list[str]:
        return sorted({r.session for r in self.bold if r.session})

    @property
    def tasks(self) -> list[str]:
        return sorted({r.task for r in self.bold})


@dataclass(frozen=True)
class Selection:
    """Every participant selected for this run."""

    subjects: tuple[SubjectSelection, ...]
    #: One line per selected participant left out (what is wrong and the fix).
    refused: tuple[str, ...] = ()

    @property
    def bold_runs(self) -> list[BoldRun]:
        return [run for subject in self.subjects for run in subject.bold]

    def summary(self) -> str:
        """A few human lines: subjects, sessions, tasks and runs."""
        lines = [
            f"Selected {len(self.subjects)} participant(s), {len(self.bold_runs)} BOLD run(s):"
        ]
        for subject in self.subjects:
            sessions = ", ".join(subject.sessions) or "-"
            lines.append(
                f"  sub-{subject.subject}: sessions [{sessions}], tasks "
                f"[{', '.join(subject.tasks)}], {len(subject.t1w)} T1w, runs: "
                + ", ".join(run.name + (f" (field map: {run.fieldmap.method})"
                                        if run.fieldmap else "") for run in subject.bold)
            )
        return "\n".join(lines)


def dataset_fingerprint(bids_dir: Path) -> str:
    """Hash of every indexed file's relative path, size and modification time.

    Symbolic links are not followed: a link is hashed by its target's name (and the target's
    size and time when it is there), so a DataLad / git-annex dataset without its content
    (broken links) is indexed without reading anything; the files of the selected
    participants are checked later (:func:`fmrilm_bids.dataset.checks.check_selection`).
    """
    digest = hashlib.sha1(str(Path(bids_dir).absolute()).encode())
    for root, dirs, files in os.walk(bids_dir):
        rel_root = Path(root).relative_to(bids_dir)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d not in IGNORED_FOLDERS]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            stat = path.lstat()
            line = f"{rel_root / name}:{stat.st_size}:{stat.st_mtime_ns}"
            if path.is_symlink():
                line += f"->{os.readlink(path)}"
                with contextlib.suppress(OSError):
                    target = path.stat()
                    line += f":{target.st_size}:{target.st_mtime_ns}"
            digest.update(f"{line}\n".encode())
    return digest.hexdigest()[:16]


def _indexer() -> BIDSLayoutIndexer:
    return BIDSLayoutIndexer(
        validate=False, ignore=[*IGNORED_FOLDERS, re.compile(r"/\.")], index_metadata=True
    )


def _build_index(bids_dir: Path, target: Path) -> None:
    """Index ``bids_dir`` into ``target`` (absent or empty): built beside it, then renamed."""
    building = target.with_name(target.name + f".building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    BIDSLayout(bids_dir, validate=False, indexer=_indexer(), database_path=building)
    if target.is_dir():
        target.rmdir()  # empty (checked by the callers): the rename needs it gone
    os.replace(building, target)


def index_dataset(bids_dir: Path, database_dir: Path) -> Any:
    """Return a pybids ``BIDSLayout`` of ``bids_dir``, using the cached index when current.

    Parameters
    ----------
    bids_dir : Path
        The raw BIDS dataset.
    database_dir : Path
        Folder holding cached indexes (one sub-folder per dataset fingerprint).
    """

    bids_dir = Path(bids_dir).absolute()
    database_dir = Path(database_dir).absolute()
    database_dir.mkdir(parents=True, exist_ok=True)
    target = database_dir / dataset_fingerprint(bids_dir)
    with FileLock(str(target) + ".lock"):
        if not (target / INDEX_FILE).is_file():
            _build_index(bids_dir, target)
    return BIDSLayout(bids_dir, validate=False, database_path=target, reset_database=False)


#: The kinds of file a ``--bids-filter-file`` may filter (others are not used: a warning).
FILTER_KINDS = ("bold", "t1w")
_FILTER_EXAMPLE = '{"bold": {"acquisition": "mb4"}, "t1w": {"session": "01"}}'


def _filter_value_ok(value: Any) -> bool:
    if isinstance(value, list):
        return all(_filter_value_ok(item) for item in value)
    return value is None or isinstance(value, (str, int, float, bool))


def check_bids_filters(filters: Any) -> None:
    """Check the shape of a ``--bids-filter-file``: an object whose keys are kinds of file
    (``bold``, ``t1w``) and whose values are objects of entity queries (a value, a list of
    values, or null).

    Raises
    ------
    ValueError
        Saying what is wrong and giving an example.
    """
    example = f"write e.g. {_FILTER_EXAMPLE}"
    if not isinstance(filters, dict):
        raise ValueError(f"it must be a JSON object of kinds of file, not a "
                         f"{type(filters).__name__}; {example}")
    for kind, query in filters.items():
        if not isinstance(query, dict):
            raise ValueError(f"'{kind}' must map to an object of entities, not "
                             f"{json_repr(query)}; {example}")
        for entity, value in query.items():
            if not _filter_value_ok(value):
                raise ValueError(f"'{kind}'.'{entity}' is {json_repr(value)}; an entity takes a "
                                 f"value, a list of values or null; {example}")
        if kind not in FILTER_KINDS:
            LOGGER.warning("--bids-filter-file: '%s' is not used by fmrilm-bids (it filters "
                           "%s)", kind, " and ".join(FILTER_KINDS))


def json_repr(value: Any) -> str:
    """``value`` as JSON text (for messages about JSON files)."""

    return json.dumps(value)


def _check_filter_entities(layout: Any, filters: dict[str, dict[str, Any]]) -> None:

    known = set(layout.get_entities()) | {"extension", "suffix", "datatype", "scope"}
    entities = sorted(name for name in known if name.islower())
    for kind, query in filters.items():
        unknown = sorted(set(query) - known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], entities, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise InputDataError(
                f"--bids-filter-file: '{kind}' filters on {', '.join(unknown)}, not an entity "
                f"of {layout.root}; {hint}the entities are {', '.join(entities)}."
            )


def reuse_index(bids_dir: Path, database_dir: Path) -> Any:
    """Open the pybids index in ``database_dir`` as it is, building it there first if absent.

    The ``--bids-database-dir`` path: the dataset is not walked, so an index of a large
    dataset is built once and opened in seconds by every later run. The index is trusted as
    it is (empty the folder after changing the dataset).

    Parameters
    ----------
    bids_dir : Path
        The raw BIDS dataset the index must describe.
    database_dir : Path
        A pybids index folder (``layout_index.sqlite`` inside), or a folder that is empty or
        does not exist yet.

    Raises
    ------
    InputDataError
        When ``database_dir`` holds other files, an unreadable index, or the index of another
        dataset.
    """
    bids_dir = Path(bids_dir).absolute()
    database_dir = Path(database_dir).absolute()
    database_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(database_dir) + ".lock"):
        if not (database_dir / INDEX_FILE).is_file():
            if database_dir.is_dir() and any(database_dir.iterdir()):
                raise InputDataError(
                    f"{database_dir}: not a pybids index (no {INDEX_FILE}) and not empty; "
                    "give --bids-database-dir an index folder, an empty folder or a new path.")
            _build_index(bids_dir, database_dir)
    try:
        layout = BIDSLayout(bids_dir, validate=False, database_path=database_dir,
                            reset_database=False)
    except (SQLAlchemyError, BIDSValidationError) as err:  # damaged, or its dataset is gone
        raise InputDataError(
            f"{database_dir / INDEX_FILE}: the pybids index cannot be used "
            f"({type(err).__name__}); empty {database_dir} to rebuild it.") from err
    if Path(layout.root).absolute() != bids_dir:
        raise InputDataError(
            f"{database_dir}: this pybids index was built for {layout.root}, not {bids_dir}; "
            "point --bids-database-dir at this dataset's index or at an empty folder.")
    return layout


def _strip(label: str, prefix: str) -> str:
    return label[len(prefix):] if label.startswith(prefix) else label


def select_runs(
    layout: Any,
    participant_label: list[str] | None = None,
    session_label: list[str] | None = None,
    task_id: list[str] | None = None,
    bids_filters: dict[str, dict[str, Any]] | None = None,
    fieldmaps: bool = True,
) -> Selection:
    """Resolve the participants, sessions, tasks and BOLD runs to process.

    With ``fieldmaps``, each run gets the field map intended for it
    (:func:`fmrilm_bids.dataset.fieldmaps.find_fieldmaps`); ``--ignore fieldmaps`` (and
    fMRIPrep inputs, already corrected) leave them out.

    ``bids_filters`` follows fMRIPrep's ``--bids-filter-file``: ``{"bold": {...}, "t1w":
    {...}}`` with pybids entity queries for each kind of file.

    Raises
    ------
    MissingInputError
        For an unknown participant, session or task, or when no BOLD run matches.
    """
    root = Path(layout.root)
    bids_filters = bids_filters or {}
    _check_filter_entities(layout, bids_filters)
    available = sorted(layout.get_subjects())
    if not available:
        raise MissingInputError(
            f"{root}: no sub-* folders with data were found; point BIDS_DIR at the dataset root."
        )
    wanted = [_strip(p, "sub-") for p in participant_label or []] or available
    unknown = [p for p in wanted if p not in available]
    if unknown:
        raise MissingInputError(
            f"{root}: unknown participant(s) {', '.join('sub-' + p for p in unknown)}; "
            f"the dataset has {', '.join('sub-' + s for s in available)}."
        )
    sessions = [_strip(s, "ses-") for s in session_label or []]
    tasks = [_strip(t, "task-") for t in task_id or []]
    for label, values, known in (
        ("session", sessions, layout.get_sessions()),
        ("task", tasks, layout.get_tasks()),
    ):
        missing = sorted(set(values) - set(known))
        if missing:
            raise MissingInputError(
                f"{root}: unknown {label}(s) {', '.join(missing)}; the dataset has "
                f"{', '.join(sorted(known)) or 'none'}."
            )

    subjects = []
    for subject in wanted:
        query: dict[str, Any] = {"subject": subject}
        if sessions:
            query["session"] = sessions
        bold_query = {**query, "datatype": "func", "suffix": "bold",
                      "extension": list(NIFTI_EXTENSIONS), **bids_filters.get("bold", {})}
        if tasks:
            bold_query["task"] = tasks
        runs = []
        for bold in layout.get(**bold_query):
            entities = bold.get_entities()
            events = layout.get_nearest(
                bold.path, suffix="events", extension=".tsv", strict=True,
                ignore_strict_entities=["suffix", "extension", "datatype"],
            )
            runs.append(BoldRun(
                path=Path(bold.path),
                subject=subject,
                task=entities["task"],
                session=entities.get("session"),
                run=int(entities["run"]) if entities.get("run") is not None else None,
                acquisition=entities.get("acquisition"),
                metadata=dict(layout.get_metadata(bold.path)),
                events=Path(events) if events else None,
            ))
        if fieldmaps and runs:
            found = find_fieldmaps(layout, subject, [r.path for r in runs],
                                   [r.metadata for r in runs])
            runs = [replace(r, fieldmap=found.get(r.path)) for r in runs]
        t1w = layout.get(**{**query, "datatype": "anat", "suffix": "T1w",
                            "extension": list(NIFTI_EXTENSIONS), **bids_filters.get("t1w", {})})
        if runs:
            subjects.append(SubjectSelection(
                subject=subject,
                t1w=tuple(Path(f.path) for f in t1w),
                bold=tuple(sorted(runs, key=lambda r: r.path.name)),
            ))
    if not subjects:
        asked = []
        if participant_label:
            asked.append("--participant-label " + " ".join(wanted))
        if sessions:
            asked.append("--session-label " + " ".join(sessions))
        if tasks:
            asked.append("--task-id " + " ".join(tasks))
        if bids_filters:
            asked.append("--bids-filter-file")
        raise MissingInputError(
            f"{root}: no BOLD runs (func/*_bold.nii[.gz]) matched"
            + (f" {', '.join(asked)}" if asked else "")
            + "; check the selection flags against the dataset's tasks "
            f"({', '.join(layout.get_tasks()) or 'none'})."
        )
    return Selection(subjects=tuple(subjects))
