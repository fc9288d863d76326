"""Descriptors of runs and datasets: records for ``_desc-descriptors_text.tsv``, metadata,
and the group corpus.

:func:`describe_dataset` is the group-level entry point: features of every run, the cohort
reference (or a saved one), then per run a text table (run-level paragraph plus one sentence
group per window) and a JSON-ready metadata dict that holds every number the text states.
Texts are rendered from the metadata only (:func:`render_records`), so
:func:`build_corpus` can regenerate any number of paraphrases from saved sidecars.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fmrilm_bids.config import settings_from_dict
from fmrilm_bids.fmrilm.descriptors.features import (
    FeatureSettings,
    RunFeatures,
    compute_run_features,
    group_connectivity,
    group_gradient_template,
)
from fmrilm_bids.fmrilm.descriptors.networks import cluster_networks, networks_of
from fmrilm_bids.fmrilm.descriptors.reference import DescriptorReference, build_reference
from fmrilm_bids.fmrilm.descriptors.text import run_text, select_facts
from fmrilm_bids.fmrilm.descriptors.windows import (
    HRF_DELAY,
    WindowFacts,
    render_windows,
    window_facts,
)

#: Columns of a descriptor text table.
RECORD_COLUMNS = ("scope", "onset", "duration", "text")


@dataclass(frozen=True)
class DescriptorSettings:
    """How runs are described (recorded in the metadata).

    Attributes
    ----------
    features : FeatureSettings
    window_length : float
        Window length (s); match the tokenizer's patch duration to pair them.
    level_threshold : float
        Network level (SD) beyond which a window calls it above/below baseline.
    hrf_delay : float
        Shift (s) of events before matching them to windows.
    max_facts : int
        Facts stated in a run paragraph.
    min_salient_z : float
        Smallest ``|z|`` of a fact stated for being unusual.
    n_data_driven_networks : int
        Clusters, when the networks are data-driven (no network table).
    """

    features: FeatureSettings = field(default_factory=FeatureSettings)
    window_length: float = 12.0
    level_threshold: float = 0.5
    hrf_delay: float = HRF_DELAY
    max_facts: int = 8
    min_salient_z: float = 0.5
    n_data_driven_networks: int = 7

    def to_dict(self) -> dict[str, object]:
        return {"features": self.features.to_dict(), "window_length": self.window_length,
                "level_threshold": self.level_threshold, "hrf_delay": self.hrf_delay,
                "max_facts": self.max_facts, "min_salient_z": self.min_salient_z,
                "n_data_driven_networks": self.n_data_driven_networks}

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> DescriptorSettings:
        """Settings written by :meth:`to_dict` (e.g. read back from a model folder)."""
        values = dict(values)
        features = FeatureSettings.from_dict(values.pop("features"))
        return settings_from_dict(cls, {**values, "features": features}, "descriptor")


@dataclass
class RunInput:
    """One run to describe.

    Attributes
    ----------
    timeseries : DataFrame of shape (n_timepoints, n_parcels)
        Denoised parcel signals; columns are the atlas region names.
    tr : float
        Repetition time (s).
    confounds : DataFrame, optional
        With ``framewise_displacement`` (adds the motion facts).
    events : DataFrame, optional
        BIDS events (``onset``, ``duration``, ``trial_type``, optional ``caption``).
    """

    timeseries: pd.DataFrame
    tr: float
    confounds: pd.DataFrame | None = None
    events: pd.DataFrame | None = None


@dataclass
class RunDescriptors:
    """The description of one run.

    Attributes
    ----------
    records : DataFrame
        :data:`RECORD_COLUMNS`; one ``run`` row then one ``window`` row per window.
    metadata : dict
        JSON-ready: reference, settings, every feature value and z-score, the facts stated
        (with their sentences), the window facts.
    features : RunFeatures
    """

    records: pd.DataFrame
    metadata: dict[str, object]
    features: RunFeatures = field(repr=False)

    @property
    def window_texts(self) -> list[str]:
        """The descriptor sentence of every window (the tokenizer's alignment targets, the
        language model's description targets)."""
        return self.records.loc[self.records["scope"] == "window", "text"].tolist()

    @property
    def window_events(self) -> list[str | None]:
        """What was shown in every window (its events' captions or trial types, joined by
        ``"; "``), None for a window without events: the tokenizer's event alignment
        targets."""
        return ["; ".join(window["events"]) or None for window in self.metadata["windows"]]

    @property
    def run_text(self) -> str:
        """The run paragraph."""
        return " ".join(self.records.loc[self.records["scope"] == "run", "text"])


def run_seed(key: str, seed: int, paraphrase: int = 0) -> list[int]:
    """Paraphrase seed of a run: the global seed, a stable hash of its key, the variant."""
    return [seed, zlib.crc32(key.encode()), paraphrase]


def render_records(metadata: Mapping[str, object],
                   seed: int | Sequence[int] = 0) -> tuple[pd.DataFrame, list[dict]]:
    """Text table of a run from its metadata.

    Returns
    -------
    records : DataFrame
        :data:`RECORD_COLUMNS`.
    facts : list of dict
        The run-level facts with the sentence stating each.
    """
    reference = metadata["reference"]
    context = {"duration": metadata["duration"], "n_parcels": metadata["n_parcels"],
               "n_networks": len(metadata["network_sizes"]),
               "reference": reference["description"] if reference["n_runs"] > 1 else None,
               "annotations": metadata["annotations"]}
    features = metadata["features"]
    facts = [{"feature": key, "value": features[key]["value"], "z": features[key]["z"]}
             for key in metadata["stated_features"]]
    text, rendered = run_text(facts, context, seed=seed)
    windows = [WindowFacts(**window) for window in metadata["windows"]]
    window_seed = int(np.random.default_rng(seed).integers(2**31))
    texts = render_windows(windows, metadata["settings"]["level_threshold"], seed=window_seed)
    rows = [("run", 0.0, float(metadata["duration"]), text)]
    rows += [("window", w.onset, w.duration, t) for w, t in zip(windows, texts, strict=True)]
    return pd.DataFrame(rows, columns=list(RECORD_COLUMNS)), rendered


def describe_run(run: RunInput, networks: Sequence[str], reference: DescriptorReference,
                 settings: DescriptorSettings = DescriptorSettings(),
                 seed: int | Sequence[int] = 0,
                 features: RunFeatures | None = None) -> RunDescriptors:
    """Describe one run against a reference.

    Parameters
    ----------
    run : RunInput
    networks : sequence of str
        Network of each parcel (column of ``run.timeseries``).
    reference : DescriptorReference
        Cohort statistics (its gradient template aligns the run's gradients).
    settings : DescriptorSettings
    seed : int or sequence of int
        Paraphrase seed.
    features : RunFeatures, optional
        Already computed features of this run (with the same reference template).

    Returns
    -------
    RunDescriptors
    """
    reference.check_parcels(list(run.timeseries.columns))
    if features is None:
        features = compute_run_features(run.timeseries, run.tr, networks, run.confounds,
                                        reference.gradient_template, settings.features)
    zscores = reference.zscores(features.values)
    windows = window_facts(run.timeseries, run.tr, networks, settings.window_length,
                           run.events, settings.hrf_delay)
    metadata: dict[str, object] = {
        "reference": {"description": reference.description, "n_runs": reference.n_runs},
        "settings": settings.to_dict(),
        "duration": features.duration,
        "n_parcels": len(networks),
        "network_sizes": {n: int(c) for n, c in zip(*np.unique(networks, return_counts=True),
                                                    strict=True)},
        "features": {key: {"value": value, "z": zscores[key]}
                     for key, value in features.values.items()},
        "annotations": features.annotations,
        "stated_features": select_facts(features.values, zscores, settings.max_facts,
                                        settings.min_salient_z),
        "windows": [window.to_dict() for window in windows],
    }
    records, facts = render_records(metadata, seed)
    metadata["facts"] = facts
    return RunDescriptors(records=records, metadata=metadata, features=features)


def resolve_networks(region_names: Sequence[str], network_table: pd.DataFrame | None,
                     timeseries: Sequence[pd.DataFrame], reference: DescriptorReference | None,
                     settings: DescriptorSettings) -> list[str]:
    """Network of each parcel: from the table, the saved reference, or clustering."""
    if network_table is not None:
        return networks_of(region_names, network_table)
    if reference is not None and reference.networks:
        reference.check_parcels(region_names)
        return list(reference.networks)
    return cluster_networks(group_connectivity(timeseries), settings.n_data_driven_networks,
                            settings.features.seed)


def describe_dataset(runs: Mapping[str, RunInput], network_table: pd.DataFrame | None = None,
                     reference: DescriptorReference | None = None,
                     reference_runs: Collection[str] | None = None,
                     settings: DescriptorSettings = DescriptorSettings(),
                     seed: int = 0) -> tuple[dict[str, RunDescriptors], DescriptorReference]:
    """Describe every run of a dataset (group level).

    Parameters
    ----------
    runs : mapping of str to RunInput
        Keyed by run (e.g. the BIDS stem ``sub-01_task-rest``); all runs share one atlas.
    network_table : DataFrame, optional
        ``name`` and ``network`` columns (:func:`~.networks.load_network_table`). Without
        it the networks come from the saved reference, else from clustering the cohort's
        mean connectivity (data-driven networks).
    reference : DescriptorReference, optional
        A saved reference; by default the runs themselves are the reference cohort.
    reference_runs : collection of str, optional
        Without a saved reference: the keys of the runs that form the cohort (e.g. the
        control group's); all runs by default.
    settings : DescriptorSettings
    seed : int
        Paraphrase seed (combined with each run's key).

    Returns
    -------
    descriptors : dict of str to RunDescriptors
    reference : DescriptorReference
        The reference used (save it to describe later subjects alone).
    """
    if not runs:
        raise ValueError("describe_dataset needs at least one run.")
    names = list(next(iter(runs.values())).timeseries.columns)
    for key, run in runs.items():
        if list(run.timeseries.columns) != names:
            raise ValueError(f"Run {key} has other parcels than the first run; describe "
                             "runs of one atlas together.")
    series = [run.timeseries for run in runs.values()]
    networks = resolve_networks(names, network_table, series, reference, settings)
    if reference is None:
        cohort = list(runs) if reference_runs is None else list(reference_runs)
        unknown = sorted(set(cohort) - set(runs))
        if unknown or not cohort:
            raise ValueError(f"reference_runs must name runs being described; unknown: "
                             f"{unknown[:5]}.")
        template = group_gradient_template([runs[key].timeseries for key in cohort],
                                           settings.features)
        features = {key: compute_run_features(run.timeseries, run.tr, networks, run.confounds,
                                              template, settings.features)
                    for key, run in runs.items()}
        reference = build_reference([features[key] for key in cohort], names, networks,
                                    template, description=f"a cohort of {len(cohort)} runs")
    else:
        features = {key: None for key in runs}
    described = {key: describe_run(run, networks, reference, settings, run_seed(key, seed),
                                   features[key])
                 for key, run in runs.items()}
    return described, reference


BIDS_ENTITY = re.compile(r"(sub|ses|task|acq|run)-([a-zA-Z0-9]+)")


def build_corpus(metadata_by_run: Mapping[str, Mapping[str, object]], n_paraphrases: int = 3,
                 seed: int = 0) -> pd.DataFrame:
    """Training corpus: every description of every run, in ``n_paraphrases`` wordings.

    Parameters
    ----------
    metadata_by_run : mapping of str to dict
        Run key (a BIDS stem) -> the metadata of :func:`describe_run` (as saved in JSON).
    n_paraphrases : int, default=3
        Wordings of each text (paraphrase 0 is the one written with ``seed``).
    seed : int

    Returns
    -------
    DataFrame
        Columns ``run``, the BIDS entities found in the key (``sub``, ``ses``, ``task``,
        ``acq``, ``run`` as ``run_index``), ``paraphrase``, then :data:`RECORD_COLUMNS`.
    """
    if n_paraphrases < 1:
        raise ValueError(f"n_paraphrases must be at least 1, not {n_paraphrases}.")
    tables = []
    for key, metadata in metadata_by_run.items():
        entities = {("run_index" if name == "run" else name): value
                    for name, value in BIDS_ENTITY.findall(key)}
        for paraphrase in range(n_paraphrases):
            records, _ = render_records(metadata, run_seed(key, seed, paraphrase))
            tables.append(records.assign(run=key, paraphrase=paraphrase, **entities))
    corpus = pd.concat(tables, ignore_index=True)
    leading = ["run", *[c for c in ("sub", "ses", "task", "acq", "run_index")
                        if c in corpus], "paraphrase"]
    return corpus[leading + list(RECORD_COLUMNS)]
