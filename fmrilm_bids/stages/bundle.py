"""The Stage-1 model folder: what ``group`` trains and ``participant --model`` applies.

::

    <model_dir>/stage1.json                 atlas, model parcels, their networks and MNI
                                            centres, parcels left out (and why),
                                            descriptor settings, seed,
                                            text embedder, subject split (``TrainSubjects``,
                                            ``TestSubjects``: held out, the tokenizer's
                                            validation), held-out metrics, tokenizer hash
    <model_dir>/descriptor_reference.json   the cohort reference of the descriptors
                                            (:class:`~fmrilm_bids.fmrilm.descriptors.DescriptorReference`)
    <model_dir>/tokenizer/                  model.safetensors, config.json, README.md (its
                                            model card)
    <model_dir>/README.md                   this model's card

Later stages may add their own folders beside these (e.g. ``lm/``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fmrilm_bids.errors import InputDataError, MissingInputError
from fmrilm_bids.fmrilm.card import render_card
from fmrilm_bids.fmrilm.descriptors.corpus import DescriptorSettings
from fmrilm_bids.fmrilm.descriptors.networks import NETWORKS
from fmrilm_bids.fmrilm.descriptors.reference import DescriptorReference
from fmrilm_bids.fmrilm.tokenizer.config import TokenizerConfig, TrainConfig
from fmrilm_bids.fmrilm.tokenizer.model import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    NeuralTokenizer,
    weights_hash,
)
from fmrilm_bids.fmrilm.tokenizer.train import MODEL_CARD
from fmrilm_bids.resources.text_encoder import EMBEDDING_DIM
from fmrilm_bids.utils.devices import CPU

#: Where the networks of the parcels come from (:attr:`Stage1Settings.networks`).
NETWORK_SOURCES = ("atlas", "data-driven")
STAGE1_FILE = "stage1.json"
REFERENCE_FILE = "descriptor_reference.json"
TOKENIZER_FOLDER = "tokenizer"
README_FILE = "README.md"
#: Format of ``stage1.json`` (2: tokens per parcel group, parcel coordinates).
STAGE1_VERSION = 2


@dataclass(frozen=True)
class Stage1Settings:
    """What the group level trains (recorded in the model folder).

    Attributes
    ----------
    tokenizer : TokenizerConfig
        Architecture and window format; ``text_dim`` must match the text embedder (384 for
        the default all-MiniLM-L6-v2).
    training : TrainConfig
        Optimisation (its ``seed`` is replaced by the run's).
    descriptors : DescriptorSettings or None
        How runs are described; None: the defaults with windows as long as the tokenizer's.
    n_paraphrases : int
        Wordings of each text in the group corpus.
    test_fraction : float
        Share of participants held out of training, the tokenizer's validation (at least one
        when there are two or more).
    reference_group : str or None
        Describe runs against the participants whose ``group`` column in
        ``participants.tsv`` has this value (e.g. ``"control"``); None: all runs.
    networks : {"atlas", "data-driven"}
        Parcels grouped by the atlas's network table, or by clustering the cohort's
        functional connectivity (``descriptors.n_data_driven_networks`` clusters, at most
        as many as there are canonical networks: the tokenizer's identity slots).
    """

    tokenizer: TokenizerConfig = field(
        default_factory=lambda: TokenizerConfig(text_dim=EMBEDDING_DIM))
    training: TrainConfig = field(default_factory=TrainConfig)
    descriptors: DescriptorSettings | None = None
    n_paraphrases: int = 3
    test_fraction: float = 0.25
    reference_group: str | None = None
    networks: str = "atlas"

    def __post_init__(self) -> None:
        if self.networks not in NETWORK_SOURCES:
            raise ValueError(f"networks must be one of {', '.join(NETWORK_SOURCES)}, not "
                             f"{self.networks!r}.")
        clusters = (self.descriptors or DescriptorSettings()).n_data_driven_networks
        if self.networks == "data-driven" and clusters > len(NETWORKS):
            raise ValueError(f"n_data_driven_networks is {clusters}; the tokenizer has "
                             f"{len(NETWORKS)} network slots, use at most that many.")

    def descriptor_settings(self) -> DescriptorSettings:
        """Descriptor settings whose windows are the tokenizer's patches.

        Raises
        ------
        ValueError
            When ``descriptors.window_length`` differs from the tokenizer's window.
        """
        seconds = self.tokenizer.window_seconds
        if self.descriptors is None:
            return DescriptorSettings(window_length=seconds)
        if abs(self.descriptors.window_length - seconds) > 1e-9:
            raise ValueError(f"Descriptor windows of {self.descriptors.window_length:g} s do "
                             f"not pair with the tokenizer's {seconds:g} s patches; set "
                             f"window_length={seconds:g}.")
        return self.descriptors


@dataclass
class Stage1Model:
    """A Stage-1 model folder, read (:meth:`load`).

    Attributes
    ----------
    directory : Path
    info : dict
        Content of ``stage1.json``.
    reference : DescriptorReference
    """

    directory: Path
    info: dict = field(repr=False)
    reference: DescriptorReference = field(repr=False)

    @property
    def atlas(self) -> str:
        """The ``seg-`` label of the series the model reads."""
        return self.info["Atlas"]

    @property
    def parcels(self) -> list[str]:
        return list(self.info["Parcels"])

    @property
    def networks(self) -> list[str]:
        return list(self.info["Networks"])

    @property
    def coordinates(self) -> np.ndarray:
        """MNI centre (mm) of each parcel, ``(n_parcels, 3)`` (NaN: position unknown)."""
        return np.array([(np.nan,) * 3 if c is None else c
                         for c in self.info["ParcelCoordinates"]], dtype=float)

    @property
    def descriptor_settings(self) -> DescriptorSettings:
        return DescriptorSettings.from_dict(self.info["DescriptorSettings"])

    @property
    def seed(self) -> int:
        """Paraphrase seed of the descriptors (applying the model words runs the same way)."""
        return int(self.info["Seed"])

    @property
    def tokenizer_hash(self) -> str:
        return self.info["TokenizerHash"]

    @classmethod
    def load(cls, directory: str | Path) -> Stage1Model:
        """Read a folder written by :func:`save_stage1_model`.

        Raises
        ------
        MissingInputError
            When ``directory`` is not a Stage-1 model folder.
        InputDataError
            For another format version, or a tokenizer whose weights changed.
        """
        directory = Path(directory).absolute()
        path = directory / STAGE1_FILE
        if not path.is_file():
            raise MissingInputError(
                f"{directory}: not an fmrilm-bids model (no {STAGE1_FILE}); give --model the "
                "model folder a group run wrote (OUTPUT_DIR/models/fmrilm).")
        info = json.loads(path.read_text())
        if info.get("Version") != STAGE1_VERSION:
            raise InputDataError(f"{path}: Stage-1 format {info.get('Version')}, this "
                                 f"fmrilm-bids reads {STAGE1_VERSION}; retrain the model.")
        if weights_hash(directory / TOKENIZER_FOLDER) != info["TokenizerHash"]:
            raise InputDataError(f"{directory / TOKENIZER_FOLDER / WEIGHTS_FILE}: the weights "
                                 f"differ from those {STAGE1_FILE} names; retrain the model.")
        reference = DescriptorReference.load(directory / REFERENCE_FILE)
        return cls(directory=directory, info=info, reference=reference)

    def files(self) -> dict[str, Path]:
        """Name -> path of everything in the folder (to publish it with later stages)."""
        return {path.name: path for path in sorted(self.directory.iterdir())}

    def tokenizer(self, device: torch.device = CPU) -> NeuralTokenizer:
        """The trained tokenizer, in evaluation mode on ``device``."""
        return NeuralTokenizer.from_pretrained(self.directory / TOKENIZER_FOLDER,
                                               device).eval()





def model_card(info: dict) -> str:
    """Markdown card of a Stage-1 model (``README.md`` of the model folder)."""
    metrics = {key: f"{value:.4f}" for key, value in info["Metrics"].items()}
    tokenizer = info["Tokenizer"]
    return render_card("fMRI-LM Stage 1 (fmrilm-bids)", f"""
Descriptor reference and neural tokenizer trained by `fmrilm-bids ... group` on the
`seg-{info["Atlas"]}` denoised parcel series of {len(info["TrainSubjects"])} training
participants. Apply it with `fmrilm-bids BIDS_DIR OUTPUT_DIR participant --model {{this
folder}}`: every run gets `_desc-descriptors_text.tsv` (described against this reference) and
`_desc-fmrilm_tokens.tsv` ({tokenizer["n_groups"]} tokens, one per learned parcel group, from
{tokenizer["codebook_size"]} codes per {tokenizer["patch_length"]} samples at TR
{tokenizer["target_tr"]:g} s: {TokenizerConfig.from_dict(tokenizer).bits_per_window:g} bits per
window).""", {
        "Data": {"atlas": info["Atlas"], "parcels": len(info["Parcels"]),
                 "parcels left out (no signal in some runs)": len(info["ExcludedParcels"]),
                 "training participants": ", ".join(info["TrainSubjects"]),
                 "held-out (validation) participants": ", ".join(info["TestSubjects"])
                 or "none",
                 "descriptor reference": info["Reference"]},
        "Held-out metrics (validation participants)":
            metrics or "No validation participant (a single participant).",
        "Text alignment": f"""Window descriptors are embedded with **{info["TextEmbedder"]}**
(width {tokenizer["text_dim"]}) for the tokenizer's contrastive alignment loss.""",
        "Files": f"""`{STAGE1_FILE}` (settings, parcels and networks, parcels left out with the
reason), `{REFERENCE_FILE}`, `{TOKENIZER_FOLDER}/` (`{WEIGHTS_FILE}`, `{CONFIG_FILE}`, its own
`{MODEL_CARD}`). Tokenizer weights: `{info["TokenizerHash"]}`."""})


def save_stage1_model(folder: Path, checkpoint: Path, reference: DescriptorReference,
                      info: dict) -> None:
    """Fill ``folder`` with a Stage-1 model (see the module docstring).

    Parameters
    ----------
    folder : Path
        An empty folder.
    checkpoint : Path
        The training folder of the tokenizer (its weights, config and model card are copied;
        the trainer state is not).
    reference : DescriptorReference
    info : dict
        ``stage1.json`` content without ``Version`` and ``TokenizerHash`` (added here).
    """
    tokenizer = folder / TOKENIZER_FOLDER
    tokenizer.mkdir()
    for name in (WEIGHTS_FILE, CONFIG_FILE, MODEL_CARD):
        shutil.copy2(checkpoint / name, tokenizer / name)
    reference.save(folder / REFERENCE_FILE)
    info = {"Version": STAGE1_VERSION, **info, "TokenizerHash": weights_hash(tokenizer)}
    (folder / STAGE1_FILE).write_text(json.dumps(info, indent=1))
    (folder / README_FILE).write_text(model_card(info))


def stage1_info(atlas: str, parcels: list[str], networks: list[str],
                coordinates: np.ndarray, excluded: dict[str, str],
                settings: Stage1Settings, seed: int,
                text_embedder: str, train_subjects: list[str],
                test_subjects: list[str], metrics: dict[str, float],
                reference: DescriptorReference) -> dict:
    """``stage1.json`` content (without ``Version`` and ``TokenizerHash``)."""
    return {"Atlas": atlas, "Parcels": parcels, "Networks": networks,
            "ParcelCoordinates": [None if not np.isfinite(c).all() else np.round(c, 2).tolist()
                                  for c in np.asarray(coordinates, dtype=float)],
            "ExcludedParcels": excluded,
            "DescriptorSettings": settings.descriptor_settings().to_dict(),
            "NParaphrases": settings.n_paraphrases,
            "ReferenceGroup": settings.reference_group, "NetworkSource": settings.networks,
            "Reference": reference.description, "Seed": seed, "TextEmbedder": text_embedder,
            "Tokenizer": settings.tokenizer.to_dict(),
            "Training": asdict(settings.training),
            "TrainSubjects": train_subjects, "TestSubjects": test_subjects,
            "Metrics": metrics}
