"""Where signals live: AAL3 regions grouped into networks and picture-category preferences.

The network of each region follows the large-scale networks of Yeo et al. (2011), plus
subcortical and cerebellar groups; the category preferences follow the category-selective
cortex of the ventral and dorsal visual streams (FFA/OFA/pSTS for faces, PPA/RSC/OPA for
places, lateral occipito-temporal cortex for animals and vehicles, left pMTG/IPL/premotor
for tools, insula and orbitofrontal cortex for food).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

NETWORKS = ("Visual", "Somatomotor", "DorsalAttention", "Salience", "Limbic", "Frontoparietal",
            "Default", "Subcortical", "Cerebellum")

#: Region-name prefixes (hemisphere suffix removed) and their network; first match wins.
NETWORK_RULES: tuple[tuple[str, str], ...] = (
    ("Thal_LGN", "Visual"), ("Calcarine", "Visual"), ("Cuneus", "Visual"), ("Lingual", "Visual"),
    ("Occipital", "Visual"), ("Fusiform", "Visual"),
    ("Thal_VL", "Somatomotor"), ("Thal_VPL", "Somatomotor"), ("Thal_MGN", "Somatomotor"),
    ("Precentral", "Somatomotor"), ("Postcentral", "Somatomotor"),
    ("Rolandic_Oper", "Somatomotor"), ("Supp_Motor_Area", "Somatomotor"),
    ("Paracentral_Lobule", "Somatomotor"), ("Heschl", "Somatomotor"),
    ("Temporal_Sup", "Somatomotor"),
    ("Parietal_Sup", "DorsalAttention"), ("Parietal_Inf", "DorsalAttention"),
    ("Temporal_Inf", "DorsalAttention"),
    ("Insula", "Salience"), ("Cingulate_Mid", "Salience"), ("SupraMarginal", "Salience"),
    ("ACC_sup", "Salience"), ("Frontal_Inf_Oper", "Salience"),
    ("Hippocampus", "Limbic"), ("ParaHippocampal", "Limbic"), ("Amygdala", "Limbic"),
    ("Temporal_Pole", "Limbic"), ("Olfactory", "Limbic"), ("Rectus", "Limbic"),
    ("OFC", "Limbic"), ("Frontal_Med_Orb", "Limbic"), ("ACC_sub", "Limbic"),
    ("Frontal_Sup_Medial", "Default"), ("Cingulate_Ant", "Default"), ("ACC_pre", "Default"),
    ("Cingulate_Post", "Default"), ("Precuneus", "Default"), ("Angular", "Default"),
    ("Temporal_Mid", "Default"),
    ("Frontal_Sup", "Frontoparietal"), ("Frontal_Mid", "Frontoparietal"),
    ("Frontal_Inf", "Frontoparietal"),
    ("Caudate", "Subcortical"), ("Putamen", "Subcortical"), ("Pallidum", "Subcortical"),
    ("Thal", "Subcortical"), ("N_Acc", "Subcortical"), ("VTA", "Subcortical"),
    ("SN_", "Subcortical"), ("Red_N", "Subcortical"), ("LC", "Subcortical"),
    ("Raphe", "Subcortical"),
    ("Cerebellum", "Cerebellum"), ("Vermis", "Cerebellum"),
)

#: Expected correlation of latent network signals (pairs not listed: 0).
NETWORK_COUPLING: dict[tuple[str, str], float] = {
    ("Default", "DorsalAttention"): -0.3,
    ("Default", "Limbic"): 0.3,
    ("Visual", "DorsalAttention"): 0.3,
    ("Visual", "Somatomotor"): 0.2,
    ("Salience", "Frontoparietal"): 0.3,
    ("Salience", "Subcortical"): 0.2,
    ("Somatomotor", "Cerebellum"): 0.3,
}

#: Regions that respond to every picture (early and mid-level visual cortex).
VISUAL_REGIONS = ("Calcarine", "Cuneus", "Lingual", "Occipital", "Fusiform", "Thal_LGN")
#: Regions with a weaker, semantic (category-independent) selectivity.
SEMANTIC_REGIONS = ("Angular", "Temporal_Mid", "Temporal_Inf", "Frontal_Inf_Tri",
                    "Precuneus", "Parietal_Inf")
#: Category-selective regions, per picture category.
CATEGORY_REGIONS: dict[str, tuple[str, ...]] = {
    "faces": ("Fusiform", "Occipital_Inf", "Temporal_Sup", "Amygdala"),
    "places": ("ParaHippocampal", "Lingual", "Cingulate_Post", "Precuneus", "Occipital_Sup",
               "Hippocampus"),
    "animals": ("Fusiform", "Temporal_Inf", "Occipital_Mid", "Occipital_Inf"),
    "tools": ("Temporal_Mid_L", "Parietal_Inf_L", "SupraMarginal_L", "Precentral_L",
              "Frontal_Inf_Oper_L"),
    "vehicles": ("Occipital_Mid", "Temporal_Inf", "Parietal_Sup", "Occipital_Sup"),
    "food": ("Insula", "OFC", "Frontal_Med_Orb", "Fusiform"),
}


def _matches(name: str, prefix: str) -> bool:
    """Whether an AAL3 region name falls under a rule prefix (prefixes may name a side)."""
    if prefix.endswith(("_L", "_R")):
        return name.startswith(prefix[:-2]) and name.endswith(prefix[-2:])
    return name.startswith(prefix)


def assign_networks(names: Sequence[str]) -> list[str]:
    """Network of each AAL3 region (see :data:`NETWORK_RULES`).

    Raises
    ------
    ValueError
        For a region no rule covers (the simulator supports the AAL3 naming).
    """
    networks = []
    for name in names:
        base = re.sub(r"_[LR]$", "", name)
        for prefix, network in NETWORK_RULES:
            if base.startswith(prefix):
                networks.append(network)
                break
        else:
            raise ValueError(f"No network rule for the region {name!r}; the simulator "
                             "knows the AAL3 region names.")
    return networks


def network_correlation(networks: Sequence[str] = NETWORKS) -> np.ndarray:
    """Correlation matrix of the latent network signals, from :data:`NETWORK_COUPLING`."""
    index = {name: i for i, name in enumerate(networks)}
    matrix = np.eye(len(networks))
    for (first, second), value in NETWORK_COUPLING.items():
        matrix[index[first], index[second]] = matrix[index[second], index[first]] = value
    return matrix


def region_membership(names: Sequence[str], prefixes: Sequence[str]) -> np.ndarray:
    """Boolean mask of the regions matched by any of ``prefixes``."""
    return np.array([any(_matches(name, prefix) for prefix in prefixes) for name in names])


def category_preferences(names: Sequence[str], categories: Sequence[str]) -> np.ndarray:
    """Which regions prefer which picture category.

    Returns
    -------
    ndarray of bool, shape (n_regions, n_categories)
    """
    return np.stack([region_membership(names, CATEGORY_REGIONS[c]) for c in categories], axis=1)
