"""nipype interfaces: apply a trained Stage-1 model to one run (participant level).

Both read a run from its written files (the denoised series in the derivatives folder, its
sidecar and confounds beside it, the raw run and its events) and a model folder written by
:func:`fmrilm_bids.stage1.run_stage1_group`; each returns a table (``out_file``, in the node's
folder) and its sidecar content (``metadata``, with ``Sources``) for a
:class:`~fmrilm_bids.interfaces.bids.DerivativesDataSink`::

    descriptors = pe.Node(Stage1Descriptors(model_dir=..., bids_dir=...), name="descriptors")
    ds_descriptors = pe.Node(DerivativesDataSink(
        base_directory=output_dir, source_file=run.path, suffix="text", desc="descriptors"),
        name="ds_descriptors")
    workflow.connect([
        (ds_timeseries, descriptors, [("out_file", "timeseries_file")]),
        (ds_confounds, descriptors, [("out_file", "confounds_file")]),
        (descriptors, ds_descriptors, [("out_file", "in_file"), ("metadata", "meta_dict"),
                                       ("atlas", "segmentation")]),
    ])

(``Stage1Tokens`` the same, with ``suffix="tokens", desc="fmrilm"``.) The tables are those
:func:`~fmrilm_bids.stage1.apply_stage1` writes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from fmrilm_bids.derivative_runs import DerivativeRun
from fmrilm_bids.stage1.bundle import Stage1Model
from fmrilm_bids.stage1.outputs import descriptor_sidecar, descriptor_table, token_sidecar
from fmrilm_bids.stage1.pipeline import describe_with_model, tokenize
from fmrilm_bids.stage1.runs import derivatives_root, read_run_files, stage1_view


class _Stage1InputSpec(BaseInterfaceInputSpec):
    timeseries_file = File(exists=True, mandatory=True,
                           desc="a written <run>_seg-<atlas>_desc-denoised_timeseries.tsv in "
                           "the derivatives folder (its JSON sidecar beside it)")
    confounds_file = File(exists=True,
                          desc="the written <run>_desc-confounds_timeseries.tsv (connect the "
                          "confounds sink here so that this node runs after it)")
    source_file = File(exists=True, mandatory=True, desc="the raw BOLD run")
    events_file = File(exists=True, desc="the raw run's events.tsv")
    bids_dir = Directory(exists=True, mandatory=True, desc="the raw dataset (BIDS URIs)")
    model_dir = Directory(exists=True, mandatory=True, desc="a Stage-1 model folder")


class _Stage1OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the table (TSV)")
    metadata = traits.Dict(desc="its sidecar content, with Sources")
    atlas = traits.Str(desc="the seg- label of the model")


class _Stage1RunInterface(SimpleInterface):
    """Shared reading of the run and the model."""

    input_spec = _Stage1InputSpec
    output_spec = _Stage1OutputSpec

    def _read(self) -> tuple[DerivativeRun, Stage1Model, Path]:
        inputs = self.inputs
        run = read_run_files(Path(inputs.timeseries_file), Path(inputs.source_file),
                             Path(inputs.events_file) if isdefined(inputs.events_file) else None)
        confounds = run.timeseries_file.parent / f"{run.key}_desc-confounds_timeseries.tsv"
        if isdefined(inputs.confounds_file) and Path(inputs.confounds_file) != confounds:
            raise ValueError(f"{inputs.confounds_file}: expected the confounds beside the "
                             f"series, {confounds}.")
        model = Stage1Model.load(inputs.model_dir)
        return (stage1_view(run, model.parcels), model,
                derivatives_root(run.timeseries_file, run.bold.subject))

    def _write(self, table: pd.DataFrame, name: str, metadata: dict, atlas: str,
               cwd: str) -> None:
        out = Path(cwd) / name
        table.to_csv(out, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
        self._results.update(out_file=str(out), metadata=metadata, atlas=atlas)


class Stage1Descriptors(_Stage1RunInterface):
    """Describe one run against the model's saved reference (``_desc-descriptors_text``)."""

    def _run_interface(self, runtime):
        run, model, derivatives_dir = self._read()
        descriptors = describe_with_model([run], model)[run.key]
        self._write(descriptor_table(run, descriptors), "descriptors_text.tsv",
                    descriptor_sidecar(run, descriptors, model, derivatives_dir,
                                       Path(self.inputs.bids_dir)), model.atlas, runtime.cwd)
        return runtime


class Stage1Tokens(_Stage1RunInterface):
    """Tokenise one run with the model's tokenizer (``_desc-fmrilm_tokens``), on the CPU."""

    def _run_interface(self, runtime):
        run, model, derivatives_dir = self._read()
        tokens = tokenize(model.tokenizer("cpu"), [run], model.networks)[0]
        self._write(tokens.to_frame(), "fmrilm_tokens.tsv",
                    token_sidecar(run, model, derivatives_dir, Path(self.inputs.bids_dir)),
                    model.atlas, runtime.cwd)
        return runtime
