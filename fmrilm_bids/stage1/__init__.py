"""fMRI-LM Stage 1 on a BIDS derivatives tree: descriptor corpus and neural tokenizer.

``group`` (:func:`run_stage1_group`) describes every selected run against the cohort, trains
the tokenizer on the training participants' windows aligned to their descriptor texts,
publishes the model folder (:mod:`.bundle`) and writes each run's descriptors and tokens
plus the group corpus (:mod:`.outputs`). ``participant --model DIR``
(:func:`apply_stage1`, or the per-run nipype interfaces of
:mod:`fmrilm_bids.interfaces.stage1`) describes runs against the saved reference and
tokenises them with the saved tokenizer. How runs are read (missing parcels, censored
volumes, networks): :mod:`.runs`.
"""

from .bundle import Stage1Model, Stage1Settings
from .outputs import CORPUS_FILE
from .pipeline import (
    Stage1Result,
    Stage1Run,
    apply_stage1,
    describe_and_tokenize,
    run_stage1_group,
)

__all__ = ["CORPUS_FILE", "Stage1Model", "Stage1Result", "Stage1Run", "Stage1Settings",
           "apply_stage1", "describe_and_tokenize", "run_stage1_group"]
