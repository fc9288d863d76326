"""fMRI-LM on a derivatives tree: ``group`` trains the three stages, ``participant --model``
applies a trained model.

Both start from the participant level's denoised parcel series. Stage 1 (descriptors and
tokenizer, :mod:`fmrilm_bids.stages.stage1`) writes every run's descriptors and tokens and
publishes its model folder; Stages 2-3 (:mod:`fmrilm_bids.fmrilm.llm`) then train the language
model and every run gets its captions, embeddings and answers
(:mod:`fmrilm_bids.stages.outputs`). Training state (checkpoints) lives in
``WORK_DIR/fmrilm_training`` so a killed ``group`` resumes; the trained model is published
whole into ``OUTPUT_DIR/models/fmrilm``:

```
models/fmrilm/stage1.json                 atlas, parcels and networks, settings, split
models/fmrilm/descriptor_reference.json   cohort reference of the descriptors (z-scores)
models/fmrilm/tokenizer/                  Stage 1 (safetensors + config + model card)
models/fmrilm/lm/                         Stages 2-3 (LoRA adapters, fMRI-token embeddings,
                                          tokenizer, config, model card)
models/fmrilm/metrics.json                held-out-subject evaluation
models/fmrilm/README.md                   the model card
```

Launched by ``torchrun`` (or ``accelerate launch``) the group level is data parallel: the
main process trains Stage 1 and writes its files, every process trains Stages 2-3 on its
share of each batch (:mod:`fmrilm_bids.utils.devices`), the runs' captions, embeddings and
answers are shared out between the processes, and the main process alone publishes the model
and the report.
"""

from __future__ import annotations

from pathlib import Path

from fmrilm_bids.dataset.layout import Selection
from fmrilm_bids.errors import MissingInputError
from fmrilm_bids.stages.bundle import Stage1Model
from fmrilm_bids.stages.language import LM_FOLDER, apply_language_model


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


def apply_model(selection: Selection, config: object) -> None:
    """``participant --model DIR``: descriptors, tokens, captions, embeddings and answers
    of the selected runs from a model trained by ``group``."""
    from fmrilm_bids.stages.stage1 import apply_stage1
    from fmrilm_bids.utils.devices import resolve_device

    execution, workflow = config.execution, config.workflow
    model_dir = Path(workflow.model_dir)
    stage1 = load_model(model_dir)
    device = str(resolve_device(workflow.device))
    stage1_runs = apply_stage1(selection, execution.output_dir, execution.bids_dir,
                               stage1.directory, device=device)
    apply_language_model(model_dir / LM_FOLDER, stage1_runs, execution.output_dir,
                         execution.bids_dir, stage1.atlas, device, llm_dir=workflow.llm_dir)
