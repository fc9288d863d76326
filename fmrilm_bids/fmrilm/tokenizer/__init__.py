"""fMRI tokenizer (stage 1 of fMRI-LM): parcel time series -> discrete tokens aligned to text.

Modules: :mod:`.runs` (common TR, robust normalisation, patches, parcel identity),
:mod:`.quantizer` (EMA codebook), :mod:`.model` (the neural tokenizer and its config),
:mod:`.train` (group training, checkpoints, model card), :mod:`.baseline` (PCA, product-quantised),
:mod:`.metrics` (reconstruction R², codebook use, fMRI -> text retrieval).
"""

from fmrilm_bids.fmrilm.tokenizer.baseline import PCAProductQuantizer
from fmrilm_bids.fmrilm.tokenizer.config import TokenizerConfig, TrainConfig
from fmrilm_bids.fmrilm.tokenizer.metrics import (
    codebook_usage,
    reconstruction_r2,
    retrieval_top1,
    token_text_means,
)
from fmrilm_bids.fmrilm.tokenizer.model import NeuralTokenizer
from fmrilm_bids.fmrilm.tokenizer.runs import (
    ParcelRun,
    PreparedRun,
    TokenizedRun,
    prepare_run,
    prepare_runs,
)
from fmrilm_bids.fmrilm.tokenizer.train import TrainingResult, evaluate, train_tokenizer

__all__ = [
    "NeuralTokenizer", "PCAProductQuantizer", "ParcelRun", "PreparedRun", "TokenizedRun",
    "TokenizerConfig", "TrainConfig", "TrainingResult", "codebook_usage", "evaluate",
    "prepare_run", "prepare_runs", "reconstruction_r2", "retrieval_top1", "token_text_means",
    "train_tokenizer",
]
