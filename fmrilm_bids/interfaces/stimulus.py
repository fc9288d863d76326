"""nipype interfaces of the stimulus models (:mod:`fmrilm_bids.stimulus`).

- :class:`SingleTrialResponses`: LSS betas of one template-space run (grey matter), in %
  signal change, with the table of what each volume is and parcel tables per atlas.
- :class:`EncodingModel`: the caption-aligned encoding model over a participant's runs of
  one task, with its accuracy maps, noise ceiling, weights, parcel tables, selectivity
  captions and report section.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from nilearn.image import resample_to_img
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from fmrilm_bids.fmrilm.llm.backbone import llm_text_embedder
from fmrilm_bids.preproc import denoise
from fmrilm_bids.preproc.parcellation import parcel_signals
from fmrilm_bids.reports.figures import statmap_figure
from fmrilm_bids.reports.html import section
from fmrilm_bids.resources.atlases import load_atlas
from fmrilm_bids.resources.captions import load_caption_pool
from fmrilm_bids.resources.text_encoder import encode_sentences
from fmrilm_bids.stimulus import encoding, features, lss, selectivity

LOGGER = logging.getLogger(__name__)

#: Separator of the captions of one block in the betas table.
CAPTION_SEPARATOR = lss.CAPTION_SEPARATOR
#: Grey-matter probability above which a template voxel is modelled.
GM_THRESHOLD = 0.5


def text_embedders(spaces: Sequence[str], device: str = "cpu",
                   llm_dir: str | None = None) -> dict[str, Callable[[list[str]], np.ndarray]]:
    """A ``list[str] -> ndarray`` embedder per feature space (:data:`features.FEATURE_SPACES`)."""
    unknown = sorted(set(spaces) - set(features.FEATURE_SPACES))
    if unknown:
        raise ValueError(f"Unknown feature space(s) {unknown}; known: "
                         f"{', '.join(features.FEATURE_SPACES)}")
    embedders: dict[str, Callable[[list[str]], np.ndarray]] = {}
    for space in spaces:
        if space == "sentence":
            embedders[space] = lambda texts: encode_sentences(list(texts), device=device)
        else:
            embedders[space] = llm_text_embedder(llm_dir, device=torch.device(device))
    return embedders


def grey_matter_mask(mask_file: str, gm_probseg: str) -> nib.Nifti1Image:
    """The BOLD brain mask within the template's grey matter (probability > 0.5)."""
    mask_img = nib.load(mask_file)
    gm = resample_to_img(nib.load(gm_probseg), mask_img, interpolation="linear",
                         force_resample=True, copy_header=True)
    inside = (np.asarray(mask_img.dataobj) > 0) & (np.asarray(gm.dataobj) > GM_THRESHOLD)
    return nib.Nifti1Image(inside.astype(np.uint8), mask_img.affine)


def response_units(events: pd.DataFrame, unit: str, block_gap: float,
                   captions: list[str]) -> pd.DataFrame:
    """The modelled units (events or blocks) with their caption(s), in onset order."""
    events = events.assign(caption=captions).reset_index(drop=True)
    blocks = lss.group_blocks(events, block_gap)
    chosen = lss.resolve_unit(unit, blocks)
    if chosen == "block":
        table = lss.block_events(events, blocks, CAPTION_SEPARATOR)
        if "trial_type" not in table:
            table["trial_type"] = "n/a"
        return table[["onset", "duration", "trial_type", "caption", "block",
                      "n_events"]].assign(unit="block")
    table = events.assign(block=blocks).sort_values("onset", kind="stable")
    return pd.DataFrame({
        "onset": table["onset"].astype(float), "duration": table["duration"].astype(float),
        "trial_type": (table["trial_type"].astype(str) if "trial_type" in table
                       else "n/a"),
        "caption": table["caption"], "block": table["block"].astype(int),
        "n_events": 1}).reset_index(drop=True).assign(unit="event")


def betas_mask(betas_files: Sequence[str | Path]) -> np.ndarray:
    """The voxels modelled in every run: a nonzero beta for some unit of each run (the LSS
    betas are 0 outside the grey-matter mask of their run)."""
    return np.logical_and.reduce([np.any(np.asarray(nib.load(f).dataobj) != 0, axis=-1)
                                  for f in betas_files])


def read_betas(betas_files: Sequence[str | Path], betas_tables: Sequence[str | Path],
               inside: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
    """The LSS betas of a task's runs at the voxels ``inside`` (a 3-D mask), and their units.

    Returns
    -------
    responses : ndarray of shape (n_units, n_voxels), float32
        The runs' units stacked in run order (voxels in C order within ``inside``).
    units : pandas.DataFrame
        The runs' betas tables (:func:`response_units`) stacked, with a ``run`` column
        (the run's position in ``betas_files``).
    """
    betas, tables = [], []
    for run, (image, table) in enumerate(zip(betas_files, betas_tables, strict=True)):
        betas.append(np.asarray(nib.load(image).dataobj, dtype=np.float32)[inside].T)
        tables.append(pd.read_csv(table, sep="\t", keep_default_na=False).assign(run=run))
    return np.concatenate(betas), pd.concat(tables, ignore_index=True)


def fold_groups(units: pd.DataFrame, cv: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """Cross-validation groups of a task's units: by run (``cv="run"``, or ``"auto"`` with
    two runs or more) or by block.

    Returns
    -------
    groups : ndarray
        Fold group of each unit (its run or its block).
    blocks : ndarray
        Block of each unit, unique over the runs.
    by_run : bool
    """
    by_run = cv == "run" or (cv == "auto" and units["run"].nunique() > 1)
    blocks = (units["run"] * 100_000 + units["block"]).to_numpy()
    return (units["run"].to_numpy() if by_run else blocks), blocks, by_run


class _ResponsesInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True, desc="template-space preprocessed BOLD")
    mask_file = File(exists=True, mandatory=True, desc="its brain mask")
    gm_probseg = File(exists=True, mandatory=True, desc="template grey-matter probability")
    confounds_file = File(exists=True, mandatory=True, desc="confounds TSV")
    confounds_metadata = File(exists=True, desc="its JSON sidecar")
    events_file = File(exists=True, mandatory=True, desc="the run's events.tsv")
    repetition_time = traits.Float(mandatory=True)
    start_time = traits.Float(0.0, usedefault=True, desc="time (s) of each volume's sample")
    strategy = traits.Str("24P+aCompCor", usedefault=True)
    high_pass = traits.Float(0.008, usedefault=True)
    dummy_scans = traits.Either(None, traits.Int, default=None, usedefault=True)
    unit = traits.Enum(*lss.UNITS, usedefault=True)
    block_gap = traits.Float(lss.DEFAULT_BLOCK_GAP, usedefault=True)
    caption_column = traits.Str("caption", usedefault=True)
    stim_captions = File(exists=True, desc="TSV stim_file -> caption")
    atlases = traits.List(traits.Str, [], usedefault=True)


class _ResponsesOutputSpec(TraitedSpec):
    betas_file = File(exists=True, desc="4-D betas (% signal change), one volume per unit")
    betas_table = File(exists=True, desc="TSV: one row per volume of betas_file")
    mask_file = File(exists=True, desc="grey-matter mask of the modelled voxels")
    parcel_files = traits.List(File(exists=True), desc="per atlas: units x parcels TSV")
    atlas_names = traits.List(traits.Str)
    metadata = traits.Dict(desc="sidecar of the betas")


class SingleTrialResponses(SimpleInterface):
    """LSS beta series of one run (see :mod:`fmrilm_bids.stimulus.lss`).

    Betas are in % signal change of each voxel's mean; the nuisance model is the denoising
    strategy's confounds, a cosine high-pass and a constant; non-steady-state volumes are
    left out.
    """

    input_spec = _ResponsesInputSpec
    output_spec = _ResponsesOutputSpec

    def _run_interface(self, runtime):
        events = pd.read_csv(self.inputs.events_file, sep="\t", keep_default_na=False,
                             na_values=["n/a"])
        stim = features.read_stim_captions(
            self.inputs.stim_captions if isdefined(self.inputs.stim_captions) else None)
        captions = features.event_captions(events, self.inputs.caption_column, stim)
        units = response_units(events, self.inputs.unit, self.inputs.block_gap, captions)
        bold_img = nib.load(self.inputs.bold_file)
        gm_img = grey_matter_mask(self.inputs.mask_file, self.inputs.gm_probseg)
        inside = np.asarray(gm_img.dataobj) > 0
        if not inside.any():
            LOGGER.warning("%s: no brain-mask voxel in the template's grey matter (is the run "
                           "in template space?); modelling the whole brain mask",
                           self.inputs.mask_file)
            inside = np.asarray(nib.load(self.inputs.mask_file).dataobj) > 0
            gm_img = nib.Nifti1Image(inside.astype(np.uint8), gm_img.affine)
        data = np.asarray(bold_img.dataobj, dtype=np.float32)[inside].T
        table = pd.read_csv(self.inputs.confounds_file, sep="\t", na_values="n/a")
        metadata = {}
        if isdefined(self.inputs.confounds_metadata):
            metadata = json.loads(Path(self.inputs.confounds_metadata).read_text())
        strategy = denoise.get_strategy(self.inputs.strategy)
        n_dummy = denoise.non_steady_state_count(table, self.inputs.dummy_scans)
        confounds = denoise.select_confounds(table, strategy, metadata).to_numpy()[n_dummy:]
        times = (np.arange(data.shape[0]) * self.inputs.repetition_time
                 + self.inputs.start_time)[n_dummy:]
        data = data[n_dummy:]
        regressors = lss.event_regressors(units["onset"].to_numpy(),
                                          units["duration"].to_numpy(), times)
        nuisance = lss.nuisance_design(times, confounds, self.inputs.high_pass)
        mean = data.mean(axis=0)
        betas = lss.lss_betas(data, regressors, nuisance)
        betas *= (100.0 / np.where(mean > 0, mean, np.inf)).astype(np.float32)
        volume = np.zeros((*inside.shape, len(units)), dtype=np.float32)
        volume[inside] = betas.T
        cwd = Path(runtime.cwd)
        betas_file = cwd / "lss_betas.nii.gz"
        nib.Nifti1Image(volume, bold_img.affine).to_filename(betas_file)
        units_file = cwd / "lss_betas.tsv"
        units.to_csv(units_file, sep="\t", index=False, float_format="%.6g")
        mask_file = cwd / "gm_mask.nii.gz"
        gm_img.to_filename(mask_file)
        parcel_files, names = [], []
        for atlas_name in self.inputs.atlases:
            atlas = load_atlas(atlas_name, reference=gm_img)
            labels = np.asarray(atlas.image.dataobj)[inside]
            parcels = parcel_signals(betas.T, labels, atlas.indices)
            columns = [atlas.labels[v] for v in parcels.present]
            out = cwd / f"seg-{atlas.name}_betas.tsv"
            pd.concat([units[["onset", "duration", "trial_type", "caption"]],
                       pd.DataFrame(parcels.signals, columns=columns)], axis=1).to_csv(
                out, sep="\t", index=False, float_format="%.6g")
            parcel_files.append(str(out))
            names.append(atlas.name)
        unit = str(units["unit"].iloc[0])
        LOGGER.info("%s: %d %s betas at %d grey-matter voxels", Path(self.inputs.bold_file).name,
                    len(units), unit, int(inside.sum()))
        self._results.update(
            betas_file=str(betas_file), betas_table=str(units_file), mask_file=str(mask_file),
            parcel_files=parcel_files, atlas_names=names,
            metadata={"Method": "least-squares separate (Mumford et al. 2012)",
                      "Unit": unit, "Units": "percent signal change", "HRF": "spm",
                      "NuisanceRegressors": f"{strategy.description}; cosine high-pass at "
                      f"{self.inputs.high_pass} Hz; constant",
                      "NonSteadyStateVolumes": n_dummy,
                      "Mask": f"brain mask within template grey matter (p > {GM_THRESHOLD})"})
        return runtime


class _EncodingInputSpec(BaseInterfaceInputSpec):
    betas_files = InputMultiObject(File(exists=True), mandatory=True)
    betas_tables = InputMultiObject(File(exists=True), mandatory=True)
    mask_files = InputMultiObject(File(exists=True), mandatory=True)
    atlases = traits.List(traits.Str, [], usedefault=True)
    spaces = traits.List(traits.Str, ["sentence"], usedefault=True)
    llm_dir = traits.Either(None, traits.Str, default=None, usedefault=True)
    device = traits.Str("cpu", usedefault=True)
    cv = traits.Enum("auto", "run", "block", usedefault=True)
    n_folds = traits.Int(5, usedefault=True)
    contrastive = traits.Float(0.0, usedefault=True)
    top = traits.Int(10, usedefault=True)
    seed = traits.Int(0, usedefault=True)
    background = File(exists=True, desc="template T1w for the report figure")
    title = traits.Str("", usedefault=True)


class _EncodingOutputSpec(TraitedSpec):
    r_map = File(exists=True, desc="held-out r per voxel")
    ceiling_map = File(desc="noise ceiling per voxel (when stimuli repeat)")
    weights_file = File(exists=True, desc="weights (n_features x n_voxels) .npy")
    parcel_files = traits.List(File(exists=True), desc="per atlas: parcel accuracy table")
    atlas_names = traits.List(traits.Str)
    selectivity_file = File(exists=True, desc="selectivity captions TSV")
    metadata = traits.Dict()
    section = File(exists=True, desc="JSON report section")


def _unit_features(captions: Sequence[str],
                   embedders: dict[str, Callable[[list[str]], np.ndarray]]
                   ) -> dict[str, np.ndarray]:
    """Features of each unit: the mean embedding of its caption(s)."""
    parts = [c.split(CAPTION_SEPARATOR) for c in captions]
    flat = [p for group in parts for p in group]
    vectors = features.embed_texts(flat, embedders)
    bounds = np.cumsum([0, *[len(g) for g in parts]])
    return {space: np.stack([v[a:b].mean(axis=0) for a, b in itertools.pairwise(bounds)])
            for space, v in vectors.items()}


class EncodingModel(SimpleInterface):
    """Fit the encoding model on a participant's betas of one task (all runs)."""

    input_spec = _EncodingInputSpec
    output_spec = _EncodingOutputSpec

    def _run_interface(self, runtime):
        inside = np.logical_and.reduce([np.asarray(nib.load(f).dataobj) > 0
                                        for f in self.inputs.mask_files])
        reference = nib.load(self.inputs.mask_files[0])
        responses, units = read_betas(self.inputs.betas_files, self.inputs.betas_tables,
                                      inside)
        groups, blocks, by_run = fold_groups(units, self.inputs.cv)
        options = {"n_folds": self.inputs.n_folds, "contrastive": self.inputs.contrastive,
                   "device": self.inputs.device, "seed": self.inputs.seed,
                   "inner_groups": blocks}
        embedders = text_embedders(self.inputs.spaces, self.inputs.device, self.inputs.llm_dir)
        unit_features = _unit_features(units["caption"].tolist(), embedders)
        fit = encoding.fit_encoding(unit_features, responses, groups, **options)
        ceiling = encoding.noise_ceiling(responses, units["caption"].tolist())
        cwd = Path(runtime.cwd)

        def to_map(values: np.ndarray, name: str) -> str:
            volume = np.full(inside.shape, np.nan, dtype=np.float32)
            volume[inside] = values
            path = cwd / name
            nib.Nifti1Image(volume, reference.affine).to_filename(path)
            return str(path)

        r_map = to_map(fit.scores, "stat-r_statmap.nii.gz")
        if ceiling is not None:
            self._results["ceiling_map"] = to_map(ceiling, "stat-noiseceiling_statmap.nii.gz")
        weights_file = cwd / "weights.npy"
        np.save(weights_file, fit.weights.astype(np.float32))

        # Candidate captions: the dataset's own, then the shipped pool.
        own = units.assign(caption=units["caption"].str.split(CAPTION_SEPARATOR,
                                                              regex=False)).explode("caption")
        own = own.drop_duplicates("caption")
        pool = load_caption_pool()
        candidates = pd.concat([
            pd.DataFrame({"topic": own["trial_type"], "caption": own["caption"],
                          "source": "dataset"}),
            pool.assign(source="pool")], ignore_index=True).drop_duplicates("caption")
        candidate_features = features.embed_texts(candidates["caption"].tolist(), embedders)

        parcel_files, names, tables_out = [], [], []
        atlas_best: pd.DataFrame | None = None
        for atlas_name in self.inputs.atlases:
            atlas = load_atlas(atlas_name, reference=reference)
            labels = np.asarray(atlas.image.dataobj)[inside]
            parcels = parcel_signals(responses.T, labels, atlas.indices)
            region_names = [atlas.labels[v] for v in parcels.present]
            parcel_fit = encoding.fit_encoding(unit_features, parcels.signals, groups,
                                               **options)
            parcel_ceiling = encoding.noise_ceiling(parcels.signals, units["caption"].tolist())
            voxel_r = parcel_signals(fit.scores[:, None], labels, atlas.indices).signals[0]
            table = pd.DataFrame({
                "region": region_names, "n_voxels": parcels.voxels,
                "r": parcel_fit.scores.round(4),
                "noise_ceiling": (parcel_ceiling.round(4) if parcel_ceiling is not None
                                  else np.nan),
                "mean_voxel_r": voxel_r.round(4)})
            out = cwd / f"seg-{atlas.name}_statmap.tsv"
            table.to_csv(out, sep="\t", index=False, na_rep="n/a")
            parcel_files.append(str(out))
            names.append(atlas.name)
            captions = selectivity.selectivity_captions(
                parcel_fit.predict(candidate_features), candidates["caption"].tolist(),
                region_names, self.inputs.top, candidates["topic"].tolist(),
                candidates["source"].tolist())
            tables_out.append(captions.assign(atlas=atlas.name))
            if atlas_best is None:
                atlas_best = table.sort_values("r", ascending=False).head(8)
                best_captions = captions

        # Clusters of well-predicted voxels: captions from their mean weights.
        score_volume = np.full(inside.shape, np.nan)
        score_volume[inside] = fit.scores
        threshold = max(0.1, float(np.nanpercentile(fit.scores, 95)))
        clusters = selectivity.voxel_clusters(score_volume, threshold)[inside]
        cluster_ids = list(range(1, int(clusters.max()) + 1))
        if cluster_ids:
            stacked = encoding.stack_features(candidate_features, fit.spaces) - fit.feature_means
            mean_weights = np.column_stack([fit.weights[:, clusters == c].mean(axis=1)
                                            for c in cluster_ids])
            predicted = stacked @ mean_weights
            tables_out.append(selectivity.selectivity_captions(
                predicted, candidates["caption"].tolist(),
                [f"cluster-{c}" for c in cluster_ids], self.inputs.top,
                candidates["topic"].tolist(), candidates["source"].tolist()).assign(
                atlas="clusters"))
        selectivity_file = cwd / "selectivity.tsv"
        columns = ["atlas", "region", "method", "rank", "caption", "score", "topic", "source"]
        pd.concat(tables_out, ignore_index=True).reindex(columns=columns).to_csv(
            selectivity_file, sep="\t", index=False)

        figures = []
        if isdefined(self.inputs.background):
            figures.append(("Held-out encoding accuracy (Pearson r of predicted and measured "
                            "single-trial responses), thresholded at r = 0.1.",
                            statmap_figure(r_map, self.inputs.background,
                                           f"{self.inputs.title} encoding accuracy")))
        rows = []
        if atlas_best is not None:
            for region, r, nc in zip(atlas_best["region"], atlas_best["r"],
                                     atlas_best["noise_ceiling"], strict=True):
                picked = best_captions[best_captions["region"] == region]
                top3 = picked[picked["method"] == "brainscuba"].head(3)["caption"]
                summary = picked[picked["method"] == "lavca"]["caption"].iloc[0]
                rows.append([region, float(r), float(nc), " / ".join(top3), summary])
        paragraphs = [
            f"Encoding model ({' + '.join(fit.spaces)} text features, ridge with per-target "
            f"penalty chosen by cross-validation) over {len(units)} "
            f"{units['unit'].iloc[0]} responses of {units['run'].nunique()} run(s), "
            f"{fit.n_folds} folds by {'run' if by_run else 'block'}; median voxel r = "
            f"{np.nanmedian(fit.scores):.3f}, 95th percentile "
            f"{np.nanpercentile(fit.scores, 95):.3f}"
            + (f"; median noise ceiling {np.nanmedian(ceiling):.3f}." if ceiling is not None
               else "; no repeated stimulus, so no noise ceiling.")]
        content = section(f"Stimulus models: {self.inputs.title}", paragraphs, figures,
                          [("Best-predicted regions and what they prefer (BrainSCUBA: top "
                            "captions; LaVCa: summary)",
                            ["Region", "r", "Noise ceiling", "Top captions", "Summary"],
                            rows)] if rows else [])
        section_file = cwd / "section.json"
        section_file.write_text(json.dumps(content))
        self._results.update(
            r_map=r_map, weights_file=str(weights_file), parcel_files=parcel_files,
            atlas_names=names, selectivity_file=str(selectivity_file),
            section=str(section_file),
            metadata={"FeatureSpaces": list(fit.spaces), "CrossValidation":
                      f"{fit.n_folds} folds by {'run' if by_run else 'block'}",
                      "ContrastiveAlignment": self.inputs.contrastive,
                      "MedianR": float(np.nanmedian(fit.scores)),
                      "WeightsShape": list(fit.weights.shape),
                      "WeightsVoxels": "voxels of the stat-r map with a finite value, in "
                      "C order"})
        return runtime
