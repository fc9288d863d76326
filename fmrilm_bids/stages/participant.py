"""``participant --model DIR``: a model trained by ``group`` applied to the selected runs.

The model folder is checked before any work (:func:`load_model`); after preprocessing, every
selected run gets its descriptors and tokens (Stage 1, against the saved cohort reference)
and its captions, embeddings and answers (Stages 2-3); where the model has a shared decoder
of a task, the participant's units of that task are decoded through its own adapter
(:func:`~fmrilm_bids.stages.decoding.apply_shared_decoder`). The device and the seed are resolved
here, once, and passed down.
"""

from __future__ import annotations

from pathlib import Path

from fmrilm_bids.config import Config
from fmrilm_bids.dataset.layout import Selection
from fmrilm_bids.errors import MissingInputError
from fmrilm_bids.fmrilm.llm.config import DecodingConfig
from fmrilm_bids.stages.bundle import Stage1Model
from fmrilm_bids.stages.decoding import apply_shared_decoder
from fmrilm_bids.stages.language import (
    LM_FOLDER,
    apply_language_model,
    write_language_reports,
)
from fmrilm_bids.stages.stage1 import apply_stage1
from fmrilm_bids.utils.devices import resolve_device, set_precision


def load_model(model_dir: Path) -> Stage1Model:
    """Check a model folder published by ``group`` (before any work); its Stage 1.

    Raises
    ------
    MissingInputError
        When ``model_dir`` is no model, or holds Stage 1 only.
    InputDataError
        When its tokenizer weights are not those it names.
    """
    stage1 = Stage1Model.load(model_dir)
    if not (stage1.directory / LM_FOLDER).is_dir():
        raise MissingInputError(
            f"{stage1.directory}: holds Stage 1 only (no {LM_FOLDER}/), as left by a group run "
            "that stopped during Stages 2-3; rerun the group level with the same work dir "
            "to finish it.")
    return stage1


def apply_model(selection: Selection, config: Config) -> None:
    """``participant --model DIR``: descriptors, tokens, captions, embeddings and answers
    of the selected runs from a model trained by ``group``."""

    execution, workflow = config.execution, config.workflow
    model_dir = Path(workflow.model_dir)
    stage1 = load_model(model_dir)
    device = resolve_device(workflow.device)  # the edge: resolved once, passed down
    set_precision(workflow.precision)
    stage1_runs = apply_stage1(selection, execution.output_dir, execution.bids_dir,
                               stage1.directory, device=device)
    apply_language_model(model_dir / LM_FOLDER, stage1_runs, execution.output_dir,
                         execution.bids_dir, stage1.atlas, device,
                         DecodingConfig(seed=config.seeds.master), llm_dir=workflow.llm_dir)
    write_language_reports(stage1_runs, execution.output_dir,
                           stage1.info["Tokenizer"]["codebook_size"])
    apply_shared_decoder(selection, config, model_dir, device)
