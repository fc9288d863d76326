"""The derivatives tree's own files: ``dataset_description.json``, ``.bidsignore``, BIDS URIs.

Every data file inside the tree goes through
:class:`fmrilm_bids.interfaces.bids.DerivativesDataSink`; the helpers here write the files
that describe the tree, atomically (temporary file in the same folder, then
:func:`os.replace`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fmrilm_bids import __version__
from fmrilm_bids.utils.files import atomic_write_text

PIPELINE_NAME = "fmrilm-bids"
CODE_URL = "https://github.com/fmrilm-bids/fmrilm-bids"
DOCKER_IMAGE = "fmrilm/fmrilm-bids"
BIDS_VERSION = "1.10.0"

#: Files the BIDS schema does not know yet (fmrilm-bids' own suffixes, logs, reports).
#: ``models`` and ``group`` hold tables and must be named without a trailing slash: the
#: validator (bids-validator-deno 3.0) still reports ``group/`` as NOT_INCLUDED.
BIDSIGNORE_PATTERNS = (
    "*.html",
    "logs/",
    "figures",
    "models",
    "group",
    "*_timeseries.tsv",
    "*_timeseries.json",
    "*_tokens.*",
    "*_captions.*",
    "*_embeddings.*",
    "*_text.*",
    "*_betas.*",
    "*_statmap.*",
    "*_selectivity.*",
    "*_weights.*",
    "*_retrieval.*",
    "*_metrics.*",
)


def bids_uri(path: Path, dataset_root: Path, dataset_name: str = "raw") -> str:
    """The BIDS URI of ``path`` inside ``dataset_root``, e.g. ``bids:raw:sub-01/func/x.nii.gz``.

    The name must be a key of ``DatasetLinks`` in the derivatives' dataset_description.json.
    """
    relative = Path(path).absolute().relative_to(Path(dataset_root).absolute())
    return f"bids:{dataset_name}:{relative.as_posix()}"


def container_info() -> dict[str, str] | None:
    """``GeneratedBy.Container`` when running in our image (set by Dockerfile/singularity.def)."""
    kind = os.environ.get("FMRILM_CONTAINER")
    if not kind:
        return None
    return {"Type": kind, "Tag": f"{DOCKER_IMAGE}:{__version__}"}


def dataset_description(bids_dir: Path,
                        derivatives: dict[str, Path] | None = None) -> dict[str, Any]:
    """The derivatives' ``dataset_description.json`` content for a run on ``bids_dir``.

    ``derivatives`` (name -> root, from ``--derivatives``) are added to ``DatasetLinks`` so
    the ``Sources`` that name them (``bids:fmriprep:...``) resolve.
    """
    generated_by: dict[str, Any] = {
        "Name": PIPELINE_NAME,
        "Version": __version__,
        "CodeURL": CODE_URL,
    }
    container = container_info()
    if container:
        generated_by["Container"] = container
    source: dict[str, Any] = {"URL": Path(bids_dir).absolute().as_uri()}
    try:
        raw = json.loads((Path(bids_dir) / "dataset_description.json").read_text())
    except (OSError, json.JSONDecodeError):
        raw = {}
    if raw.get("DatasetDOI"):
        source["DOI"] = raw["DatasetDOI"]
    return {
        "Name": f"{PIPELINE_NAME} derivatives"
        + (f" of {raw['Name']}" if raw.get("Name") else ""),
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [source],
        "DatasetLinks": {
            "raw": Path(bids_dir).absolute().as_uri(),
            "templateflow": "https://github.com/templateflow/templateflow",
            **{name: Path(path).absolute().as_uri()
               for name, path in (derivatives or {}).items()},
        },
        "HowToAcknowledge": "Please cite fMRI-LM (Wei et al., 2025, arXiv:2511.21760) and "
        "the tools listed in each subject's HTML report.",
    }


def write_derivatives_skeleton(output_dir: Path, bids_dir: Path,
                               derivatives: dict[str, Path] | None = None) -> Path:
    """Create the derivatives root with ``dataset_description.json`` and ``.bidsignore``.

    ``derivatives`` are the input derivatives (``--derivatives``), linked by name.

    Existing ``.bidsignore`` lines written by others are kept; ours are added once.

    Returns
    -------
    Path
        ``output_dir``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        output_dir / "dataset_description.json",
        json.dumps(dataset_description(bids_dir, derivatives), indent=2) + "\n",
    )
    ignore = output_dir / ".bidsignore"
    existing = ignore.read_text().splitlines() if ignore.is_file() else []
    lines = existing + [p for p in BIDSIGNORE_PATTERNS if p not in existing]
    if lines != existing:
        atomic_write_text(ignore, "\n".join(lines) + "\n")
    return output_dir
