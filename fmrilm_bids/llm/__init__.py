"""fMRI-LM Stages 2 and 3: a language model that reads fMRI tokens.

Modules: :mod:`.backbone` (offline causal LM, SmolLM2 by default; the LLM's own text
embedder for Stage 1), :mod:`.vocabulary` (fMRI tokens in the vocabulary), :mod:`.data`
(runs, questions, examples, prompts), :mod:`.model` (:class:`FmriLM`: LoRA + new token rows,
save/load), :mod:`.train` (the training loop), :mod:`.distributed` (multi-process training),
:mod:`.inference` (captions, constrained answers, embeddings), :mod:`.metrics`,
:mod:`.evaluate` (protocol and baselines), :mod:`.pipeline` (:func:`fit_fmrilm`,
:func:`apply_fmrilm`: what the app calls).
"""

from .backbone import llm_text_embedder, load_backbone
from .data import LMRun, TaskSpec, default_tasks, participant_task
from .evaluate import evaluate_fmrilm, subject_split
from .inference import DecodingConfig
from .metrics import bleu, caption_similarity, classification_metrics, rouge_l
from .model import FmriLM, FmriLMConfig
from .pipeline import FitResult, RunOutputs, apply_fmrilm, fit_fmrilm
from .train import LMTrainConfig, train_fmrilm
from .vocabulary import FmriVocabulary, extend_vocabulary

__all__ = [
    "DecodingConfig", "FitResult", "FmriLM", "FmriLMConfig", "FmriVocabulary", "LMRun",
    "LMTrainConfig", "RunOutputs", "TaskSpec", "apply_fmrilm", "bleu", "caption_similarity",
    "classification_metrics", "default_tasks", "evaluate_fmrilm", "extend_vocabulary",
    "fit_fmrilm", "llm_text_embedder", "load_backbone", "participant_task", "rouge_l",
    "subject_split", "train_fmrilm",
]
