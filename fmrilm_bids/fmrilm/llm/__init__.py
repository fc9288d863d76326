"""fMRI-LM Stages 2 and 3: a language model that reads fMRI tokens.

Modules: :mod:`.backbone` (offline causal LM, SmolLM2 by default; the LLM's own text
embedder for Stage 1), :mod:`.vocabulary` (fMRI tokens in the vocabulary), :mod:`.config`
(settings), :mod:`.runs` (a run and its windows), :mod:`.tasks` (questions),
:mod:`.prompts` (prompt formatting), :mod:`.examples` (training sequences), :mod:`.model`
(:class:`FmriLM`: LoRA + new token rows, save/load), :mod:`.train` (the training loop; the
multi-process part lives in :mod:`fmrilm_bids.utils.devices`), :mod:`.inference`
(captions, constrained answers, embeddings), :mod:`.metrics`, :mod:`.evaluate` (protocol
and baselines), :mod:`.pipeline` (:func:`fit_fmrilm`, :func:`apply_fmrilm`: what the app
calls).
"""

from fmrilm_bids.fmrilm.llm.backbone import llm_text_embedder, load_backbone
from fmrilm_bids.fmrilm.llm.config import DecodingConfig, FmriLMConfig, LMTrainConfig
from fmrilm_bids.fmrilm.llm.evaluate import evaluate_fmrilm
from fmrilm_bids.fmrilm.llm.metrics import bleu, caption_similarity, classification_metrics, rouge_l
from fmrilm_bids.fmrilm.llm.model import FmriLM
from fmrilm_bids.fmrilm.llm.pipeline import FitResult, RunOutputs, apply_fmrilm, fit_fmrilm
from fmrilm_bids.fmrilm.llm.runs import LMRun
from fmrilm_bids.fmrilm.llm.tasks import TaskSpec, default_tasks, participant_task
from fmrilm_bids.fmrilm.llm.train import train_fmrilm
from fmrilm_bids.fmrilm.llm.vocabulary import FmriVocabulary, extend_vocabulary
from fmrilm_bids.fmrilm.splits import subject_split

__all__ = [
    "DecodingConfig", "FitResult", "FmriLM", "FmriLMConfig", "FmriVocabulary", "LMRun",
    "LMTrainConfig", "RunOutputs", "TaskSpec", "apply_fmrilm", "bleu", "caption_similarity",
    "classification_metrics", "default_tasks", "evaluate_fmrilm", "extend_vocabulary",
    "fit_fmrilm", "llm_text_embedder", "load_backbone", "participant_task", "rouge_l",
    "subject_split", "train_fmrilm",
]
