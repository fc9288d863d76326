"""nipype interface of the decoders (:mod:`fmrilm_bids.stimulus.decoding`), and the language
model and candidate pool they read out with.

- :func:`caption_writer`: a ``list[str] -> list[str]`` that answers prompts with the language
  model (greedy, one sentence each).
- :func:`pool_embeddings`: the shipped caption pool's sentence embeddings, computed once per
  machine and cached in the models cache.
- :func:`read_out`: what was seen, per unit, from held-out decoded embeddings: retrieved
  captions, category probabilities, the zero-shot category, a generated caption, and the
  held-out figures (:func:`~fmrilm_bids.stimulus.readout.evaluation_table`).
- :class:`DecodingModel`: a participant's own decoders over the runs of one task, with the
  per-run tables of what was seen, the figures and a report section.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from fmrilm_bids.fmrilm.llm.backbone import backbone_source, load_backbone, models_dir
from fmrilm_bids.interfaces.stimulus import (
    CAPTION_SEPARATOR,
    betas_mask,
    fold_groups,
    read_betas,
)
from fmrilm_bids.reports.figures import metrics_figure
from fmrilm_bids.reports.html import section
from fmrilm_bids.resources.captions import load_caption_pool
from fmrilm_bids.resources.text_encoder import MODEL_NAME, encode_sentences
from fmrilm_bids.stimulus.decoding import (
    DEFAULT_CONFIG,
    HeldOut,
    held_out,
    unit_rows,
)
from fmrilm_bids.stimulus.features import trial_type_sentence
from fmrilm_bids.stimulus.readout import (
    N_PERMUTATIONS,
    caption_prompt,
    category_probabilities,
    clean_caption,
    evaluation_table,
    retrieval_ranks,
    retrieve_captions,
    zero_shot_categories,
)
from fmrilm_bids.utils.devices import CPU
from fmrilm_bids.utils.files import atomic_write

LOGGER = logging.getLogger(__name__)

#: Captions retrieved per unit.
TOP_CAPTIONS = 5
#: The best retrieved captions the language model reads.
PROMPT_CAPTIONS = 3
#: Longest generated caption (tokens).
MAX_CAPTION_TOKENS = 24
#: System message of the caption prompts (keeps chat templates from adding a long default).
CAPTION_SYSTEM = "You write short, plain captions of pictures."


def caption_writer(llm_dir: str | Path | None = None, device: torch.device = CPU,
                   max_new_tokens: int = MAX_CAPTION_TOKENS,
                   batch_size: int = 16) -> Callable[[list[str]], list[str]]:
    """A ``list[str] -> list[str]`` that answers each prompt with one sentence.

    The language model (``llm_dir``, default SmolLM2-135M-Instruct;
    :func:`~fmrilm_bids.fmrilm.llm.backbone.load_backbone`) is loaded once; prompts go
    through its chat template when it has one (a plain ``User:/Assistant:`` layout
    otherwise), left-padded in batches, decoded greedily, and cut to their first sentence
    (:func:`~fmrilm_bids.stimulus.readout.clean_caption`).
    """
    tokenizer, model = load_backbone(llm_dir, device=device)
    tokenizer.padding_side = "left"
    chat = bool(getattr(tokenizer, "chat_template", None))

    def text(prompt: str) -> str:
        if chat:
            return tokenizer.apply_chat_template(
                [{"role": "system", "content": CAPTION_SYSTEM},
                 {"role": "user", "content": prompt}], tokenize=False,
                add_generation_prompt=True)
        return f"User: {prompt}\nAssistant:"

    def write(prompts: list[str]) -> list[str]:
        answers = []
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer([text(p) for p in prompts[start:start + batch_size]],
                              return_tensors="pt", padding=True, add_special_tokens=False)
            batch = {key: value.to(device) for key, value in batch.items()}
            with torch.inference_mode():
                output = model.generate(**batch, max_new_tokens=max_new_tokens,
                                        do_sample=False, temperature=None, top_p=None,
                                        top_k=None, pad_token_id=tokenizer.pad_token_id)
            width = batch["input_ids"].shape[1]
            answers += [clean_caption(tokenizer.decode(row[width:], skip_special_tokens=True))
                        for row in output]
        return answers

    return write


def pool_embeddings(pool: Sequence[str]) -> np.ndarray:
    """Sentence embeddings of the candidate pool, cached in the models cache.

    The cache file is named by the sentence encoder and a hash of the pool, so a changed
    pool is embedded again; it is written atomically (concurrent runs agree).
    """
    digest = hashlib.sha256("\n".join(pool).encode()).hexdigest()[:16]
    path = models_dir() / f"caption-pool_{MODEL_NAME.split('/')[-1]}_{digest}.npy"
    if path.is_file():
        cached = np.load(path)
        if cached.shape[0] == len(pool):
            return cached
    vectors = encode_sentences(list(pool))
    atomic_write(path, lambda tmp: np.save(tmp, vectors, allow_pickle=False))
    return vectors


@dataclass
class Readout:
    """What was seen by every unit, and the held-out figures (:func:`read_out`).

    Attributes
    ----------
    units : pandas.DataFrame
        One row per unit (see :data:`UNIT_COLUMNS`, then ``p_<category>``).
    retrieved : pandas.DataFrame
        ``unit``, ``rank``, ``caption``, ``score``, ``source``.
    metrics : pandas.DataFrame
        :func:`~fmrilm_bids.stimulus.readout.evaluation_table`.
    embeddings : ndarray of shape (n_units, n_dims)
        The decoded embeddings the readout used, float32.
    """

    units: pd.DataFrame = field(repr=False)
    retrieved: pd.DataFrame = field(repr=False)
    metrics: pd.DataFrame = field(repr=False)
    embeddings: np.ndarray = field(repr=False)


#: Leading columns of a ``desc-decoded_captions.tsv`` (then ``p_<category>`` when the units
#: have trial types).
UNIT_COLUMNS = ("onset", "duration", "trial_type", "unit", "block", "fold", "seen_caption",
                "decoded_caption", "decoded_similarity", "retrieved_caption",
                "retrieved_similarity", "rank", "category", "zero_shot_category")
#: What each column holds (the sidecar's column descriptions).
COLUMN_DESCRIPTIONS = {
    "onset": "Onset (s) of the event or block, as in events.tsv.",
    "duration": "Duration (s) of the event or block.",
    "trial_type": "trial_type of the event or block (n/a without).",
    "unit": "What one row decodes: an event, or a block of same-type events.",
    "block": "Block number within the run (an event of an event-related design is its own "
             "block).",
    "fold": "Cross-validation fold that held the row out (its decoder never saw it).",
    "seen_caption": "The caption of what was shown (a block's captions joined by ' | ').",
    "decoded_caption": "One sentence the language model wrote from the retrieved captions "
                       "(n/a where it wrote none).",
    "decoded_similarity": "Cosine similarity (sentence encoder) of decoded_caption and "
                          "seen_caption.",
    "retrieved_caption": "The candidate caption most similar to the decoded embedding "
                         "(shipped pool and the captions of the training folds).",
    "retrieved_similarity": "Cosine similarity of retrieved_caption and seen_caption.",
    "rank": "Rank (1 = first) of seen_caption among the task's distinct unit captions by "
            "similarity to the decoded embedding.",
    "category": "The category whose name (a sentence, 'A picture of faces.') is most "
                "similar to the decoded embedding (n/a without trial types).",
    "zero_shot_category": "The category predicted by a decoder trained without this "
                          "category, among the categories left out with it (n/a when not "
                          "evaluated: fewer than four categories).",
    "p_<category>": "Probability of each category: softmax of the cosine similarities to the "
                    "category names, scaled by the decoder's 1 / temperature.",
}


def unit_sentences(captions: Sequence[str]) -> list[list[str]]:
    """The sentences of each unit's caption (a block's captions are joined by ' | ')."""
    return [str(c).split(CAPTION_SEPARATOR) for c in captions]


def unit_targets(sentences: Sequence[Sequence[str]],
                 embedded: dict[str, np.ndarray]) -> np.ndarray:
    """Each unit's target: the unit-length mean embedding of its sentences."""
    return unit_rows(np.stack([np.mean([embedded[s] for s in group], axis=0)
                               for group in sentences]))


def unit_categories(units: pd.DataFrame) -> np.ndarray | None:
    """The units' ``trial_type`` when there are two kinds or more (else None)."""
    kinds = units["trial_type"].astype(str)
    present = kinds[~kinds.isin(["n/a", "", "nan"])]
    if len(present) < len(kinds) or present.nunique() < 2:
        return None
    return kinds.to_numpy()


def read_out(held: HeldOut, decoder: str, units: pd.DataFrame,
             embed: Callable[[list[str]], np.ndarray],
             write: Callable[[list[str]], list[str]] | None, top: int = TOP_CAPTIONS,
             n_permutations: int = N_PERMUTATIONS, seed: int = 0) -> Readout:
    """What every unit saw, by ``held.predicted[decoder]``, and the held-out figures.

    Parameters
    ----------
    held : HeldOut
    decoder : str
        The key of ``held.predicted`` whose embeddings are read out.
    units : pandas.DataFrame
        The units (``onset``, ``duration``, ``trial_type``, ``caption``, ``block``,
        ``unit``), in the order of ``held``'s rows.
    embed : callable
        The sentence encoder.
    write : callable or None
        :func:`caption_writer` (None: no generated captions).
    top : int
        Captions retrieved per unit.
    n_permutations, seed : int
        Of the p-values.
    """
    sentences = unit_sentences(units["caption"])
    distinct = list(dict.fromkeys(s for group in sentences for s in group))
    embedded = dict(zip(distinct, embed(distinct), strict=True))
    targets = unit_targets(sentences, embedded)
    decoded = held.predicted[decoder]
    categories = unit_categories(units)
    names = sorted(set(categories)) if categories is not None else []
    category_embeddings = (embed([trial_type_sentence(c) for c in names])
                           if names else None)
    pool = load_caption_pool()["caption"].tolist()
    retrieved = retrieve_captions(decoded, held.folds, sentences, embedded, pool,
                                  pool_embeddings(pool), top)
    best = retrieved[retrieved["rank"] == 1].set_index("unit")["caption"].reindex(
        range(len(units)))
    generated = [""] * len(units)
    if write is not None:
        prompts = [caption_prompt(group["caption"].tolist()[:PROMPT_CAPTIONS])
                   for _, group in retrieved.groupby("unit", sort=True)]
        generated = write(prompts)
    written = [i for i, text in enumerate(generated) if text]
    generated_embeddings = np.full(targets.shape, np.nan)
    if written:
        generated_embeddings[written] = embed([generated[i] for i in written])
    retrieved_embeddings = embed(best.tolist())
    table = pd.DataFrame({
        "onset": units["onset"].to_numpy(float), "duration": units["duration"].to_numpy(float),
        "trial_type": units["trial_type"].astype(str).to_numpy(),
        "unit": units["unit"].to_numpy(), "block": units["block"].to_numpy(),
        "fold": held.folds, "seen_caption": units["caption"].to_numpy(),
        "decoded_caption": [text or None for text in generated],
        "decoded_similarity": np.round(np.sum(unit_rows(np.nan_to_num(generated_embeddings))
                                              * targets, axis=1), 4),
        "retrieved_caption": best.to_numpy(),
        "retrieved_similarity": np.round(np.sum(unit_rows(retrieved_embeddings) * targets,
                                                axis=1), 4),
        "rank": retrieval_ranks(decoded, targets),
        "category": None, "zero_shot_category": None})
    table.loc[np.setdiff1d(np.arange(len(units)), written), "decoded_similarity"] = np.nan
    if categories is not None:
        probabilities = category_probabilities(decoded, category_embeddings,
                                               held.logit_scale[decoder])
        table["category"] = np.asarray(names)[probabilities.argmax(axis=1)]
        if decoder in held.zero_shot:
            predicted, _ = zero_shot_categories(held.zero_shot[decoder], held.zero_shot_folds,
                                                categories, names, category_embeddings)
            table["zero_shot_category"] = [None if p == "n/a" else p for p in predicted]
        for index, name in enumerate(names):
            table[f"p_{name}"] = np.round(probabilities[:, index], 4)
    metrics = evaluation_table(held, targets, categories, names, category_embeddings,
                               generated_embeddings, retrieved_embeddings,
                               n_permutations=n_permutations, seed=seed)
    return Readout(units=table, retrieved=retrieved, metrics=metrics,
                   embeddings=decoded.astype(np.float32))


def decoding_metadata(llm_dir: str | Path | None, seed: int, validation: str,
                      decoder: str) -> dict[str, object]:
    """Sidecar fields every decoding output shares."""
    return {"Decoder": decoder, "DecoderSettings": DEFAULT_CONFIG.to_dict(),
            "CrossValidation": validation, "TextEncoder": MODEL_NAME,
            "LanguageModel": backbone_source(llm_dir),
            "CandidatePool": "the shipped caption pool and the captions of the training folds",
            "Permutations": N_PERMUTATIONS, "Seed": seed}


def metrics_section(title: str, paragraphs: Sequence[str], metrics: pd.DataFrame,
                    examples: pd.DataFrame | None = None) -> dict[str, object]:
    """A report section of held-out decoding figures: bars of each metric's value per
    decoder beside chance, the table, and some units' seen, retrieved and decoded captions."""
    values: dict[str, dict[str, float]] = {}
    for row in metrics.itertuples():
        values.setdefault(row.metric, {})[row.decoder] = float(row.value)
        values[row.metric]["chance"] = float(row.chance)
    rows = [[r.metric, r.decoder, float(r.value), float(r.chance), float(r.p_value), int(r.n)]
            for r in metrics.itertuples()]
    tables = [("Held-out decoding (permutation p-values)",
               ["metric", "decoder", "value", "chance", "p", "n"], rows)]
    if examples is not None and len(examples):
        tables.append(("What was seen, and what was decoded (first units)",
                       ["onset", "seen", "retrieved", "decoded", "category"],
                       [[float(r.onset), r.seen_caption, r.retrieved_caption,
                         r.decoded_caption if isinstance(r.decoded_caption, str) else "n/a",
                         r.category if isinstance(r.category, str) else "n/a"]
                        for r in examples.itertuples()]))
    figures = [("Held-out decoding: each figure for each decoder beside chance.",
                metrics_figure(values, "held-out value"))] if values else []
    return section(title, paragraphs, figures, tables)


class _DecodingInputSpec(BaseInterfaceInputSpec):
    betas_files = InputMultiObject(File(exists=True), mandatory=True)
    betas_tables = InputMultiObject(File(exists=True), mandatory=True)
    llm_dir = traits.Either(None, traits.Str, default=None, usedefault=True)
    device = traits.Str("cpu", usedefault=True)
    cv = traits.Enum("auto", "run", "block", usedefault=True)
    n_folds = traits.Int(12, usedefault=True)
    top = traits.Int(TOP_CAPTIONS, usedefault=True)
    seed = traits.Int(0, usedefault=True)
    title = traits.Str("", usedefault=True)


class _DecodingOutputSpec(TraitedSpec):
    captions_files = traits.List(File(exists=True), desc="per run: what each unit saw")
    retrieval_files = traits.List(File(exists=True), desc="per run: top retrieved captions")
    embeddings_files = traits.List(File(exists=True), desc="per run: decoded embeddings")
    metrics_file = File(exists=True, desc="held-out figures of the task")
    metadata = traits.Dict(desc="sidecar fields shared by the outputs")
    section = File(exists=True, desc="JSON report section")


class DecodingModel(SimpleInterface):
    """A participant's own decoders (ridge and contrastive head) over a task's runs: held-out
    decoded embeddings, what each unit saw, and the figures (see :func:`read_out`)."""

    input_spec = _DecodingInputSpec
    output_spec = _DecodingOutputSpec

    def _run_interface(self, runtime):
        responses, units = read_betas(self.inputs.betas_files, self.inputs.betas_tables,
                                      betas_mask(self.inputs.betas_files))
        groups, blocks, by_run = fold_groups(units, self.inputs.cv)
        device = torch.device(self.inputs.device)
        sentences = unit_sentences(units["caption"])
        distinct = list(dict.fromkeys(s for group in sentences for s in group))
        embedded = dict(zip(distinct, encode_sentences(distinct, device=str(device)),
                            strict=True))
        held = held_out(responses, unit_targets(sentences, embedded), groups,
                        unit_categories(units), self.inputs.n_folds, DEFAULT_CONFIG, device,
                        self.inputs.seed, blocks)
        write = caption_writer(self.inputs.llm_dir, device)
        readout = read_out(held, "contrastive", units,
                           lambda texts: encode_sentences(texts, device=str(device)), write,
                           self.inputs.top, seed=self.inputs.seed)
        cwd = Path(runtime.cwd)
        outputs: dict[str, list[str]] = {"captions_files": [], "retrieval_files": [],
                                         "embeddings_files": []}
        for run in sorted(units["run"].unique()):
            rows = np.flatnonzero(units["run"].to_numpy() == run)
            outputs["captions_files"].append(
                write_table(readout.units.iloc[rows], cwd / f"run{run}_captions.tsv"))
            retrieved = readout.retrieved[readout.retrieved["unit"].isin(rows)]
            on = readout.units[["onset", "duration"]]
            outputs["retrieval_files"].append(write_table(
                pd.concat([on.iloc[retrieved["unit"]].reset_index(drop=True),
                           retrieved.drop(columns="unit").reset_index(drop=True)], axis=1),
                cwd / f"run{run}_retrieval.tsv"))
            path = cwd / f"run{run}_embeddings.npy"
            np.save(path, readout.embeddings[rows])
            outputs["embeddings_files"].append(str(path))
        metrics_file = write_table(readout.metrics, cwd / "metrics.tsv")
        n_folds = int(held.folds.max()) + 1
        validation = f"{n_folds} folds by {'run' if by_run else 'block'}"
        metadata = decoding_metadata(
            self.inputs.llm_dir, self.inputs.seed, validation,
            "the participant's own contrastive head (MindEye-style MLP on the principal "
            "components of the driven voxels, InfoNCE); ridge regression as the baseline")
        summary = readout.metrics.set_index(["metric", "decoder"])
        top1 = summary.loc[("retrieval_top1", "contrastive")]
        paragraphs = [
            f"Decoders of the {units['unit'].iloc[0]} responses ({len(units)} over "
            f"{units['run'].nunique()} run(s), {validation}): each unit's decoded embedding "
            "comes from a decoder that never saw it. Retrieval ranks the unit's own caption "
            f"among the {len(units)} units' captions: contrastive head top-1 "
            f"{top1['value']:.3f} (chance {top1['chance']:.3f}, p = {top1['p_value']:.3g})."]
        (cwd / "section.json").write_text(json.dumps(metrics_section(
            f"Decoding: {self.inputs.title}", paragraphs, readout.metrics,
            readout.units.head(8))))
        self._results.update(outputs, metrics_file=metrics_file, metadata=metadata,
                             section=str(cwd / "section.json"))
        return runtime


def write_table(table: pd.DataFrame, path: Path) -> str:
    """A TSV with missing values written ``n/a``."""
    table.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    return str(path)
