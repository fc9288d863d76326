"""The one way fmrilm-bids writes a derivative file: :class:`DerivativesDataSink`.

niworkflows' sink builds BIDS names, fixes NIfTI headers and writes JSON sidecars. Ours adds
the suffixes fmrilm-bids invents (``timeseries`` under ``func/``, ``tokens``, ``captions``,
``embeddings``, ``text``; the stimulus models' ``betas``, ``statmap`` with a ``stat-`` entity,
``selectivity`` and ``weights``; the decoders' ``retrieval`` and ``metrics``) and makes every
file appear atomically: the parent class writes into a hidden staging folder on the same file
system, then each file is moved into place with :func:`os.replace`, sidecar last, so a reader
never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from niworkflows.interfaces.bids import DerivativesDataSink as _NiworkflowsSink

#: Suffixes fmrilm-bids adds to BIDS, with the extensions each may take.
FMRILM_SUFFIXES = {
    "timeseries": (".tsv",),
    "tokens": (".tsv",),
    "captions": (".tsv",),
    "embeddings": (".npy",),
    "text": (".tsv",),
    "betas": (".nii.gz", ".tsv"),
    "statmap": (".nii.gz", ".tsv"),
    "selectivity": (".tsv",),
    "weights": (".npy",),
    "retrieval": (".tsv",),
    "metrics": (".tsv",),
}

_FUNC_PATTERN = (
    "sub-{subject}[/ses-{session}]/{datatype<func>|func}/sub-{subject}[_ses-{session}]"
    "_task-{task}[_acq-{acquisition}][_ce-{ceagent}][_rec-{reconstruction}][_dir-{direction}]"
    "[_run-{run}][_echo-{echo}][_space-{space}][_cohort-{cohort}][_res-{resolution}]"
    "[_seg-{segmentation}][_desc-{desc}]"
    "_{suffix<timeseries|tokens|captions|embeddings|text>}{extension<.tsv|.npy|.json>|.tsv}"
)
_STIMULUS_PATTERN = (
    "sub-{subject}[/ses-{session}]/{datatype<func>|func}/sub-{subject}[_ses-{session}]"
    "_task-{task}[_acq-{acquisition}][_run-{run}][_space-{space}][_res-{resolution}]"
    "[_seg-{segmentation}][_stat-{statistic}][_desc-{desc}]"
    "_{suffix<betas|statmap|selectivity|weights|retrieval|metrics>}"
    "{extension<.nii.gz|.nii|.tsv|.npy|.json>|.nii.gz}"
)
_SUBJECT_PATTERN = (
    "sub-{subject}/[ses-{session}/]sub-{subject}[_ses-{session}][_desc-{desc}]"
    "_{suffix<text|embeddings>}{extension<.tsv|.npy|.json>|.tsv}"
)
_GROUP_PATTERN = "group/[desc-{desc}_]{suffix<text|embeddings>}{extension<.tsv|.npy|.json>|.tsv}"

STAGING_DIR = ".fmrilm-staging"

#: BIDS-derivatives entities niworkflows does not know; ``seg-`` names the atlas of a
#: parcel time series (BIDS common derivatives), ``stat-`` the statistic of a statmap.
_EXTRA_ENTITIES = ({"name": "segmentation", "pattern": "[_/\\\\]+seg-([a-zA-Z0-9+]+)"},
                   {"name": "statistic", "pattern": "[_/\\\\]+stat-([a-zA-Z0-9]+)"})


def _as_list(value: str | list[str] | None) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


class DerivativesDataSink(_NiworkflowsSink):
    """niworkflows' ``DerivativesDataSink`` with fmrilm-bids suffixes and atomic writes.

    ``base_directory`` is the derivatives root itself (no ``niworkflows/`` sub-folder).
    Extra keyword arguments become sidecar fields, e.g. ``Sources=[...]`` (BIDS URIs).
    """

    out_path_base = ""
    _config_entities_dict = (*_NiworkflowsSink._config_entities_dict, *_EXTRA_ENTITIES)
    _config_entities = frozenset(e["name"] for e in _config_entities_dict)
    _file_patterns = (_FUNC_PATTERN, _STIMULUS_PATTERN, _SUBJECT_PATTERN, _GROUP_PATTERN,
                      *_NiworkflowsSink._file_patterns)

    def _run_interface(self, runtime):
        final_root = Path(self.inputs.base_directory or runtime.cwd).absolute()
        staging = final_root / STAGING_DIR / uuid.uuid4().hex
        staging.mkdir(parents=True)
        self.inputs.base_directory = str(staging)
        try:
            runtime = super()._run_interface(runtime)
            moved = {}
            for src in [*_as_list(self._results.get("out_file")),
                        *_as_list(self._results.get("out_meta"))]:
                dst = final_root / Path(src).relative_to(staging)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
                moved[src] = str(dst)
            for key in ("out_file", "out_meta"):
                value = self._results.get(key)
                if isinstance(value, list):
                    self._results[key] = [moved.get(v, v) for v in value]
                elif value:
                    self._results[key] = moved.get(value, value)
        finally:
            self.inputs.base_directory = str(final_root)
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):
                (final_root / STAGING_DIR).rmdir()
        return runtime
