"""Descriptor corpus: imaging features of fMRI runs turned into graded, paraphrased text.

Natural fMRI-text pairs are scarce, so fMRI-LM learns language about brain activity from
descriptors: features of each run (network connectivity, graph metrics, functional
gradients, ICA, amplitude, head motion) compared with a reference cohort and written as
sentences ("Coupling between the default mode and frontoparietal networks is reduced
(r=0.21, z=-1.4)."), plus one description per time window (networks above or below
baseline, synchrony, the stimulus on screen). Pure functions on arrays and tables; any
dataset, no labels.

Modules: :mod:`.networks` (parcel -> network tables), :mod:`.features`, :mod:`.reference`
(z-score reference, JSON), :mod:`.text` (wording), :mod:`.windows`, :mod:`.corpus` (entry
points).
"""

from fmrilm_bids.fmrilm.descriptors.corpus import (
    RECORD_COLUMNS,
    DescriptorSettings,
    RunDescriptors,
    RunInput,
    build_corpus,
    describe_dataset,
    describe_run,
    render_records,
)
from fmrilm_bids.fmrilm.descriptors.features import (
    FeatureSettings,
    RunFeatures,
    compute_run_features,
    group_connectivity,
    group_gradient_template,
)
from fmrilm_bids.fmrilm.descriptors.networks import (
    NETWORKS,
    cluster_networks,
    load_network_table,
    networks_of,
)
from fmrilm_bids.fmrilm.descriptors.reference import DescriptorReference, build_reference
from fmrilm_bids.fmrilm.descriptors.windows import window_bounds, window_facts

__all__ = [
    "NETWORKS", "RECORD_COLUMNS", "DescriptorReference", "DescriptorSettings", "FeatureSettings",
    "RunDescriptors", "RunFeatures", "RunInput", "build_corpus", "build_reference",
    "cluster_networks", "compute_run_features", "describe_dataset", "describe_run",
    "group_connectivity", "group_gradient_template", "load_network_table", "networks_of",
    "render_records", "window_bounds", "window_facts",
]
