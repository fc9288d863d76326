"""The checks fmrilm-bids makes of its own outputs, where the official validator cannot.

The validator (bids-validator-deno, schema 1.2.7) has no derivative rule for the files
fmrilm-bids writes under ``func/`` (``_timeseries``, ``_tokens``, ``_captions``, ``_text``,
``_embeddings``, the stimulus models' ``_betas``, ``_statmap``, ``_selectivity``,
``_weights``, ``_retrieval`` and ``_metrics``), so ``.bidsignore`` hides them from it
(:data:`fmrilm_bids.dataset.derivatives.BIDSIGNORE_PATTERNS`). What it checks is
:data:`VALIDATOR_CHECKS`; the rest is checked here, after each level:

* every TSV: a header of unique, non-empty column names, as many fields in every row,
  missing values written ``n/a`` (no empty cell, no ``nan``), numbers (or ``n/a``) in every
  cell of a ``_timeseries.tsv`` and in ``onset`` / ``duration`` columns;
* the row count of a run's series against the run: a ``desc-confounds`` table has one row
  per volume, a ``desc-denoised`` series one per volume kept (volumes minus
  ``NonSteadyStateVolumes`` and ``CensoredVolumes``); the volumes are read from the header
  of the BOLD image its ``Sources`` name;
* every sidecar: a JSON object beside its data file, ``Sources`` as BIDS URIs of datasets
  named in ``DatasetLinks``, no value that is Python text (a dict or list written with
  ``str``); ``RepetitionTime`` (seconds) where the data have a time axis; a denoised
  series' ``Atlas``, ``StartTime``, ``MissingParcels`` with their reasons and
  ``ParcelVoxelCounts`` for exactly its columns.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import nibabel as nib

#: Output files the official validator checks (the others are listed in ``.bidsignore``).
VALIDATOR_CHECKS = (
    "dataset_description.json",
    "*_desc-preproc_bold.nii.gz and *_desc-brain_mask.nii.gz with their sidecars "
    "(--output-bold)",
)
#: Output files the validator cannot check (no rule in its schema), checked by fmrilm-bids.
SELF_CHECKS = (
    "*_timeseries.tsv / .json (denoised parcel series, confounds)",
    "*_tokens.tsv, *_captions.tsv, *_text.tsv and their sidecars",
    "the stimulus models' *_betas.tsv, *_statmap.tsv, *_selectivity.tsv, *_retrieval.tsv, "
    "*_metrics.tsv and their sidecars",
    "*_embeddings.npy sidecars",
    "group/*.tsv / .json",
)
#: Column names of the tables whose cells are all numbers (or ``n/a``).
_NUMERIC_COLUMNS = ("onset", "duration")
_URI = re.compile(r"^bids:(?P<name>[^:]*):(?P<path>[^:].*)$")
_NA = "n/a"
_TIMED_SUFFIXES = ("_timeseries", "_tokens")


def _python_text(value: object) -> bool:
    """Whether ``value`` is a str holding a Python dict or list (``str(dict)``)."""
    if not isinstance(value, str) or value[:1] not in ("{", "["):
        return False
    try:
        json.loads(value)
        return False  # JSON text inside a string is odd but not Python text
    except ValueError:
        pass
    try:
        return isinstance(ast.literal_eval(value), (dict, list))
    except (ValueError, SyntaxError):
        return False


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return cell.strip().lower() not in ("nan", "inf", "-inf", "infinity", "-infinity")


def check_tsv(path: Path) -> tuple[list[str], list[list[str]], list[str]]:
    """Read a TSV as text and check its shape and missing values.

    Returns
    -------
    header : list of str
    rows : list of list of str
    problems : list of str
        One sentence each, naming the line.
    """
    problems: list[str] = []
    with open(path, newline="", encoding="utf-8") as handle:
        lines = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not lines or not lines[0]:
        return [], [], ["no header line"]
    header, rows = lines[0], lines[1:]
    if any(not name for name in header):
        problems.append("an empty column name in the header")
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        problems.append(f"duplicated column(s) {', '.join(duplicated)}")
    numeric = path.name.endswith("_timeseries.tsv")
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            problems.append(f"line {number} has {len(row)} fields for {len(header)} columns")
            continue
        for name, cell in zip(header, row, strict=True):
            if cell == "" or cell.strip().lower() in ("nan", "none", "null", "na"):
                problems.append(f"line {number}, column {name}: {cell!r} where a missing "
                                "value must be written n/a")
            elif cell != _NA and (numeric or name in _NUMERIC_COLUMNS) and not _is_number(cell):
                problems.append(f"line {number}, column {name}: {cell!r} is not a number")
        if len(problems) > 5:
            break
    return header, rows, problems


def _resolve(uri: str, links: Mapping[str, Path], root: Path) -> Path | None:
    match = _URI.match(uri)
    if not match:
        return None
    base = root if match["name"] == "" else links.get(match["name"])
    return None if base is None else Path(base) / match["path"]


def _run_volumes(sources: Iterable[str], links: Mapping[str, Path],
                 root: Path) -> int | None:
    """Volumes of the BOLD image among ``sources`` (header only), if one can be read."""

    for uri in sources:
        path = _resolve(uri, links, root)
        if path is None or not path.name.endswith(("_bold.nii.gz", "_bold.nii")):
            continue
        try:
            shape = nib.load(path).shape
        except Exception:
            continue
        if len(shape) == 4:
            return int(shape[3])
    return None


def check_sidecar(data_file: Path, sidecar: dict[str, Any], links: Mapping[str, Path],
                  root: Path) -> list[str]:
    """Problems of a sidecar (see the module docstring)."""
    problems = []
    for key, value in sidecar.items():
        if _python_text(value):
            problems.append(f"{key} holds Python text ({value[:40]!r}...), not a JSON value")
    sources = sidecar.get("Sources")
    if not isinstance(sources, list) or not sources:
        problems.append("Sources (BIDS URIs of the inputs) is missing or empty")
        sources = []
    for uri in sources:
        match = _URI.match(uri) if isinstance(uri, str) else None
        if not match:
            problems.append(f"Sources: {uri!r} is not a BIDS URI (bids:<dataset>:<path>)")
        elif match["name"] and match["name"] not in links:
            problems.append(f"Sources: {uri} names the dataset '{match['name']}', which "
                            "DatasetLinks does not define")
    stem = data_file.name.split(".", 1)[0]
    if stem.endswith(_TIMED_SUFFIXES):
        tr = sidecar.get("RepetitionTime")
        if isinstance(tr, bool) or not isinstance(tr, (int, float)) or not 0 < tr < 100:
            problems.append(f"RepetitionTime is {tr!r}; it must be a number of seconds")
    return problems


def _check_denoised(header: list[str], rows: list[list[str]], sidecar: dict[str, Any],
                    volumes: int | None) -> list[str]:
    problems = []
    for key, kind in (("Atlas", str), ("StartTime", (int, float)), ("MissingParcels", list),
                      ("MissingParcelReasons", dict), ("ParcelVoxelCounts", dict),
                      ("NonSteadyStateVolumes", int), ("CensoredVolumes", list)):
        if not isinstance(sidecar.get(key), kind):
            problems.append(f"{key} is {sidecar.get(key)!r}; expected a JSON "
                            f"{'object' if kind is dict else 'array' if kind is list else 'value'}"
                            f" of the right type")
    if problems:
        return problems
    missing = sidecar["MissingParcels"]
    if sorted(missing) != sorted(sidecar["MissingParcelReasons"]):
        problems.append("MissingParcels and the keys of MissingParcelReasons differ")
    if set(missing) & set(header):
        problems.append(f"parcels listed in MissingParcels have a column: "
                        f"{', '.join(sorted(set(missing) & set(header)))}")
    counts = sidecar["ParcelVoxelCounts"]
    if sorted(counts) != sorted(header):  # the sink writes keys sorted
        problems.append("the keys of ParcelVoxelCounts are not the columns of the series")
    elif not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                 for v in counts.values()):
        problems.append("ParcelVoxelCounts must be positive integers")
    if volumes is not None:
        kept = volumes - sidecar["NonSteadyStateVolumes"] - len(sidecar["CensoredVolumes"])
        if len(rows) != kept:
            problems.append(f"{len(rows)} rows for a run of {volumes} volumes "
                            f"({sidecar['NonSteadyStateVolumes']} non-steady-state, "
                            f"{len(sidecar['CensoredVolumes'])} censored): expected {kept}")
    return problems


def check_outputs(output_dir: Path, links: Mapping[str, Path] | None = None,
                  folders: Iterable[str] | None = None) -> list[str]:
    """Check the data files and sidecars of a derivatives tree that the validator cannot.

    Parameters
    ----------
    output_dir : Path
        The derivatives root.
    links : mapping of str to Path, optional
        Dataset name -> root, for the ``Sources`` URIs; default the ``DatasetLinks`` of
        ``output_dir/dataset_description.json`` that are local (``file:`` URIs).
    folders : iterable of str, optional
        Top-level folders to check (e.g. ``["sub-01", "group"]``); default every ``sub-*``
        folder and ``group``.

    Returns
    -------
    list of str
        One line per problem, starting with the file (empty when all is well).
    """
    root = Path(output_dir)
    if links is None:
        links = {}
        description = json.loads((root / "dataset_description.json").read_text())
        for name, url in (description.get("DatasetLinks") or {}).items():
            parsed = urlparse(url)
            links[name] = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(url)
    if folders is None:
        folders = [p.name for p in sorted(root.glob("sub-*")) if p.is_dir()] + ["group"]
    problems: list[str] = []
    for folder in folders:
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.suffix not in (".tsv", ".npy") or any(p.startswith(".")
                                                           for p in path.parts):
                continue
            found = [f"{path}: {problem}" for problem in _check_file(path, links, root)]
            problems.extend(found)
    return problems


def _check_file(path: Path, links: Mapping[str, Path], root: Path) -> list[str]:
    sidecar_path = path.with_name(path.name.split(".", 1)[0] + ".json")
    sidecar: dict[str, Any] | None = None
    problems = []
    if not sidecar_path.is_file():
        problems.append(f"no sidecar {sidecar_path.name}")
    else:
        try:
            sidecar = json.loads(sidecar_path.read_text())
        except ValueError as err:
            problems.append(f"{sidecar_path.name} is not valid JSON ({err})")
        if sidecar is not None and not isinstance(sidecar, dict):
            problems.append(f"{sidecar_path.name} is not a JSON object")
            sidecar = None
        if sidecar is not None:
            problems += [f"{sidecar_path.name}: {p}"
                         for p in check_sidecar(path, sidecar, links, root)]
    if path.suffix != ".tsv":
        return problems
    header, rows, tsv_problems = check_tsv(path)
    problems += tsv_problems
    if sidecar is None or tsv_problems:
        return problems
    if path.name.endswith(("_desc-denoised_timeseries.tsv", "_desc-confounds_timeseries.tsv")):
        volumes = _run_volumes(sidecar.get("Sources") or [], links, root)
        if path.name.endswith("_desc-denoised_timeseries.tsv"):
            problems += _check_denoised(header, rows, sidecar, volumes)
        elif volumes is not None and len(rows) != volumes:
            problems.append(f"{len(rows)} rows for a run of {volumes} volumes")
    return problems
