"""Descriptor corpus: network tables, features, graded text, windows, references, corpus."""

from __future__ import annotations

import re

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from fmrilm_bids.fmrilm.descriptors import (
    NETWORKS,
    DescriptorReference,
    DescriptorSettings,
    RunInput,
    build_corpus,
    cluster_networks,
    compute_run_features,
    describe_dataset,
    load_network_table,
    window_bounds,
    window_facts,
)
from fmrilm_bids.fmrilm.descriptors.features import threshold_graph
from fmrilm_bids.fmrilm.descriptors.networks import (
    ATLAS_RULES,
    assign_networks,
    build_network_table,
    network_table_path,
)
from fmrilm_bids.fmrilm.descriptors.text import GRADE_WORDS, grade
from fmrilm_bids.resources.atlases import bundled_atlas_dir, read_label_table
from fmrilm_bids.simulate.signals import (
    bandlimited_noise,
    network_time_courses,
    parcel_fluctuations,
)

TR = 2.0
N_VOLUMES = 150
SETTINGS = DescriptorSettings(window_length=12.0)
#: The planted group effect: default mode - frontoparietal coupling of the latent signals.
COUPLED, UNCOUPLED = 0.7, 0.0


@pytest.fixture(scope="module")
def aal() -> pd.DataFrame:
    return load_network_table("AAL")


def synthetic_run(table: pd.DataFrame, seed: int, coupling: float = COUPLED,
                  n_volumes: int = N_VOLUMES, with_confounds: bool = True) -> RunInput:
    """Parcel signals driven by latent network signals (the simulator's signal model)."""
    rng = np.random.default_rng(seed)
    order = list(NETWORKS)
    correlation = np.eye(len(order))
    i, j = order.index("Default"), order.index("Frontoparietal")
    correlation[i, j] = correlation[j, i] = coupling
    latent = network_time_courses(n_volumes, TR, correlation, rng)
    assignment = np.array([order.index(n) for n in table["network"]])
    signals = parcel_fluctuations(latent, assignment, np.full(len(table), 0.6),
                                  rng.uniform(0.6, 1.0, len(table)),
                                  bandlimited_noise(n_volumes, TR, len(table), rng))
    confounds = None
    if with_confounds:
        confounds = pd.DataFrame({"framewise_displacement":
                                  np.r_[np.nan, rng.gamma(2.0, 0.06, n_volumes - 1)]})
    return RunInput(pd.DataFrame(signals, columns=table["name"]), TR, confounds)


@pytest.fixture(scope="module")
def cohort(aal: pd.DataFrame) -> dict[str, RunInput]:
    """12 subjects; the even ones (patients) lack default mode - frontoparietal coupling."""
    return {f"sub-{s:02d}_task-rest": synthetic_run(aal, s, UNCOUPLED if s % 2 == 0 else COUPLED)
            for s in range(1, 13)}


@pytest.fixture(scope="module")
def described(cohort: dict[str, RunInput], aal: pd.DataFrame) -> tuple[dict, DescriptorReference]:
    return describe_dataset(cohort, aal, settings=SETTINGS)


def parse_fact(sentence: str) -> tuple[float, float]:
    """The value and the z-score a fact sentence states."""
    value = re.search(r"[A-Za-z]+=(-?\d+(?:\.\d+)?)", sentence)
    z = re.search(r"z=([+-]\d+\.\d)", sentence)
    assert value and z, sentence
    return float(value.group(1)), float(z.group(1))


# Network tables ----------------------------------------------------------------------------

@pytest.mark.parametrize("atlas", sorted(ATLAS_RULES))
def test_shipped_network_tables_are_the_rule_set_applied_to_the_label_files(atlas: str) -> None:
    shipped = pd.read_csv(network_table_path(atlas), sep="\t")
    labels = read_label_table(bundled_atlas_dir() / f"{atlas}.txt")
    expected = build_network_table(labels, ATLAS_RULES[atlas])
    pd.testing.assert_frame_equal(shipped, expected)
    assert set(shipped["network"]) <= set(NETWORKS)
    assert len(shipped) == len(labels)


@pytest.mark.parametrize(("atlas", "region", "network"), [
    ("AAL3", "Calcarine_L", "Visual"), ("AAL3", "Precuneus_R", "Default"),
    ("AAL3", "Heschl_L", "Auditory"), ("AAL3", "Insula_R", "VentralAttention"),
    ("AAL3", "Vermis_3", "Cerebellar"), ("AAL3", "Thal_PuM_L", "Subcortical"),
    ("AAL3", "OFCmed_R", "Limbic"), ("AAL", "Cerebelum_Crus1_L", "Cerebellar"),
    ("AAL", "Cingulum_Post_L", "Default"), ("AAL", "Frontal_Mid_R", "Frontoparietal"),
    ("HCPEx", "Primary_Visual_Cortex_L", "Visual"),
    ("HCPEx", "Frontal_Eye_Fields_R", "DorsalAttention"),
    ("HCPEx", "Primary_Auditory_Cortex_L", "Auditory"),
    ("HCPEx", "Primary_Motor_Cortex_R", "Somatomotor"), ("HCPEx", "Area_PGi_L", "Default"),
    ("HCPEx", "Area_46_R", "Frontoparietal"), ("HCPEx", "Hippocampus_L", "Limbic"),
    ("HCPEx", "Thal_Pulvinar_medial_R", "Subcortical"),
])
def test_network_rules_place_landmark_regions(atlas: str, region: str, network: str) -> None:
    table = load_network_table(atlas).set_index("name")
    assert table.loc[region, "network"] == network


def test_unmatched_regions_are_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="Mystery_Area_L"):
        assign_networks(["Calcarine_L", "Mystery_Area_L"], ATLAS_RULES["AAL3"])


def test_data_driven_networks_recover_planted_networks(aal: pd.DataFrame,
                                                       cohort: dict[str, RunInput]) -> None:
    from sklearn.metrics import adjusted_rand_score

    group_fc = np.mean([np.corrcoef(run.timeseries.to_numpy().T) for run in cohort.values()],
                       axis=0)
    clusters = cluster_networks(group_fc, n_networks=aal["network"].nunique(), seed=0)
    assert adjusted_rand_score(aal["network"], clusters) > 0.8
    assert set(clusters) == {f"cluster {k}" for k in range(1, aal["network"].nunique() + 1)}


# Features ----------------------------------------------------------------------------------

def test_features_agree_with_independent_computations(aal: pd.DataFrame,
                                                      cohort: dict[str, RunInput]) -> None:
    run = cohort["sub-01_task-rest"]
    networks = aal["network"].tolist()
    features = compute_run_features(run.timeseries, TR, networks, run.confounds)
    values = features.values
    signals = run.timeseries.to_numpy()
    labels = np.array(networks)

    fc = np.corrcoef(signals.T)
    default = np.flatnonzero(labels == "Default")
    visual = np.flatnonzero(labels == "Visual")
    between = np.mean([np.arctanh(fc[a, b]) for a in default for b in visual])
    within = np.mean([np.arctanh(fc[a, b]) for a in default for b in default if a != b])
    assert values["fc.Visual~Default"] == pytest.approx(np.tanh(between), abs=1e-9)
    assert values["fc.Default~Default"] == pytest.approx(np.tanh(within), abs=1e-9)

    graph = nx.from_numpy_array(threshold_graph(fc, 0.15))
    assert graph.number_of_edges() == round(0.15 * len(fc) * (len(fc) - 1) / 2)
    assert values["graph.global_efficiency"] == pytest.approx(nx.global_efficiency(graph))
    assert values["graph.clustering"] == pytest.approx(
        nx.average_clustering(graph, weight="weight"))
    assert 0.0 < values["graph.modularity"] < 1.0

    assert values["amplitude.Default"] == pytest.approx(signals[:, default].std(axis=0).mean())
    assert all(0.0 < values[f"falff.{n}"] < 1.0 for n in set(networks))
    fd = run.confounds["framewise_displacement"].to_numpy()[1:]
    assert values["motion.mean_fd"] == pytest.approx(fd.mean())
    assert values["motion.max_fd"] == pytest.approx(fd.max())
    assert values["motion.high_fd_fraction"] == pytest.approx((fd > 0.5).mean())
    assert features.annotations["ica.top_network"] in set(networks)
    assert 0.0 < values["ica.top_share"] <= 1.0
    # Standardised gradients: the network means, weighted by size, centre on zero.
    sizes = {n: (labels == n).sum() for n in set(networks)}
    weighted = sum(values[f"gradient1.{n}"] * sizes[n] for n in sizes) / len(labels)
    assert weighted == pytest.approx(0.0, abs=1e-9)


def test_constant_parcels_are_refused(aal: pd.DataFrame) -> None:
    run = synthetic_run(aal, 0)
    run.timeseries.iloc[:, 3] = 1.0
    with pytest.raises(ValueError, match="constant"):
        compute_run_features(run.timeseries, TR, aal["network"].tolist())


# Text --------------------------------------------------------------------------------------

def test_run_text_states_the_recomputed_features(described: tuple[dict, DescriptorReference],
                                                 cohort: dict[str, RunInput],
                                                 aal: pd.DataFrame) -> None:
    descriptors, reference = described
    networks = aal["network"].tolist()
    recomputed = {key: compute_run_features(run.timeseries, TR, networks, run.confounds,
                                            reference.gradient_template).values
                  for key, run in cohort.items()}
    for key, run_descriptors in descriptors.items():
        text = run_descriptors.records.loc[0, "text"]
        facts = run_descriptors.metadata["facts"]
        assert len(facts) == SETTINGS.max_facts
        assert {"motion.mean_fd", "graph.global_efficiency", "graph.modularity"} <= {
            fact["feature"] for fact in facts}
        for fact in facts:
            feature = fact["feature"]
            assert fact["sentence"] in text
            value, z = parse_fact(fact["sentence"])
            truth = recomputed[key][feature]
            assert value == pytest.approx(truth, rel=5e-3, abs=5e-4)
            cohort_values = np.array([values[feature] for values in recomputed.values()])
            expected_z = (truth - cohort_values.mean()) / cohort_values.std(ddof=1)
            assert z == pytest.approx(expected_z, abs=0.051)
            assert fact["grade"] == grade(z)
            assert any(word in fact["sentence"] for word in GRADE_WORDS[fact["grade"]])


def test_planted_group_effect_is_visible_in_the_patients_descriptors(
        cohort: dict[str, RunInput], aal: pd.DataFrame,
        described: tuple[dict, DescriptorReference]) -> None:
    pair = "fc.Frontoparietal~Default"
    patients = [key for key in cohort if int(key[4:6]) % 2 == 0]
    controls = [key for key in cohort if key not in patients]

    # Against the whole cohort: every patient below the mean, every control above it.
    descriptors, _ = described
    assert all(descriptors[k].metadata["features"][pair]["z"] < 0 for k in patients)
    assert all(descriptors[k].metadata["features"][pair]["z"] > 0 for k in controls)

    # Against the controls: each patient's text says the coupling is (markedly) reduced.
    against_controls, reference = describe_dataset(cohort, aal, reference_runs=controls,
                                                   settings=SETTINGS)
    assert reference.n_runs == len(controls)
    for key in patients:
        sentences = [f["sentence"] for f in against_controls[key].metadata["facts"]
                     if f["feature"] == pair]
        assert sentences, f"{key}: the reduced coupling is not among the stated facts"
        assert {"default mode", "frontoparietal"} <= set(re.findall(
            r"default mode|frontoparietal", sentences[0].lower()))
        assert against_controls[key].metadata["features"][pair]["z"] < -2.0
        assert parse_fact(sentences[0])[1] < -2.0
    for key in controls:
        stated = {f["feature"]: f["grade"] for f in against_controls[key].metadata["facts"]}
        assert stated.get(pair) not in ("low", "markedly_low")


def test_paraphrases_change_wording_not_numbers(described: tuple[dict, DescriptorReference]
                                                ) -> None:
    descriptors, _ = described
    metadata = {key: d.metadata for key, d in descriptors.items()}
    corpus = build_corpus(metadata, n_paraphrases=3, seed=0)
    assert list(corpus.columns) == ["run", "sub", "task", "paraphrase", "scope", "onset",
                                    "duration", "text"]
    run_rows = corpus[(corpus["run"] == "sub-01_task-rest") & (corpus["scope"] == "run")]
    texts = run_rows["text"].tolist()
    assert len(set(texts)) == 3
    numbers = [sorted(re.findall(r"=([+-]?\d+\.\d+)", text)) for text in texts]
    assert numbers[0] == numbers[1] == numbers[2]
    # Paraphrase 0 is the text written by describe_dataset; the same seed gives the same text.
    assert texts[0] == descriptors["sub-01_task-rest"].records.loc[0, "text"]
    pd.testing.assert_frame_equal(corpus, build_corpus(metadata, n_paraphrases=3, seed=0))
    assert not build_corpus(metadata, n_paraphrases=1, seed=1)["text"].equals(
        build_corpus(metadata, n_paraphrases=1, seed=0)["text"])


def test_saved_reference_describes_one_subject_alone(tmp_path, aal: pd.DataFrame,
                                                     cohort: dict[str, RunInput],
                                                     described: tuple[dict,
                                                                      DescriptorReference]
                                                     ) -> None:
    descriptors, reference = described
    path = reference.save(tmp_path / "reference.json")
    loaded = DescriptorReference.load(path)
    key = "sub-05_task-rest"
    alone, used = describe_dataset({key: cohort[key]}, aal, reference=loaded, settings=SETTINGS)
    assert used is loaded
    for feature, stated in descriptors[key].metadata["features"].items():
        assert alone[key].metadata["features"][feature] == pytest.approx(stated)
    pd.testing.assert_frame_equal(alone[key].records, descriptors[key].records)

    other_atlas = load_network_table("AAL3")
    run = synthetic_run(other_atlas, 1)
    with pytest.raises(ValueError, match="same atlas"):
        describe_dataset({"sub-99_task-rest": run}, other_atlas, reference=loaded)


def test_data_driven_networks_are_described_and_saved(tmp_path, cohort: dict[str, RunInput]
                                                      ) -> None:
    subset = dict(list(cohort.items())[:4])
    descriptors, reference = describe_dataset(subset, None, settings=SETTINGS)
    assert all(n.startswith("cluster ") for n in reference.networks)
    assert "cluster" in descriptors["sub-01_task-rest"].records.loc[0, "text"]
    loaded = DescriptorReference.load(reference.save(tmp_path / "reference.json"))
    alone, _ = describe_dataset({"sub-01_task-rest": subset["sub-01_task-rest"]}, None,
                                reference=loaded, settings=SETTINGS)
    assert alone["sub-01_task-rest"].metadata["network_sizes"] == (
        descriptors["sub-01_task-rest"].metadata["network_sizes"])


# Windows -----------------------------------------------------------------------------------

def test_windows_name_the_active_network_and_the_delayed_stimulus(aal: pd.DataFrame) -> None:
    run = synthetic_run(aal, 3, n_volumes=60, with_confounds=False)
    visual = (aal["network"] == "Visual").to_numpy()
    boosted = run.timeseries.to_numpy().copy()
    boosted[18:24, visual] += 3.0  # 36-48 s: window 3 of 12 s
    events = pd.DataFrame({"onset": [8.0, 40.0], "duration": [2.0, 3.0],
                           "trial_type": ["face", "place"],
                           "caption": ["A smiling woman.", "n/a"]})
    facts = window_facts(boosted, TR, aal["network"].tolist(), 12.0, events, hrf_delay=5.0)

    assert [f.onset for f in facts] == window_bounds(60, TR, 12.0).tolist() == [
        0, 12, 24, 36, 48, 60, 72, 84, 96, 108]
    assert facts[3].levels["Visual"] > 1.5
    assert max(facts[3].levels, key=facts[3].levels.get) == "Visual"
    # Events delayed by 5 s: 8-10 s -> 13-15 s (window 1); 40-43 s -> 45-48 s (window 3).
    assert [f.events for f in facts[:5]] == [[], ["A smiling woman."], [], ["a place trial"],
                                             []]

    descriptors, _ = describe_dataset(
        {"sub-01_task-faces": RunInput(pd.DataFrame(boosted, columns=aal["name"]), TR,
                                       events=events),
         "sub-02_task-faces": synthetic_run(aal, 4, n_volumes=60, with_confounds=False)},
        aal, settings=SETTINGS)
    records = descriptors["sub-01_task-faces"].records
    assert records["scope"].tolist() == ["run"] + ["window"] * 10
    assert records["onset"].tolist()[1:] == [f.onset for f in facts]
    window = records.loc[4, "text"]
    assert re.search(r"visual \(\+\d\.\d SD\)", window) and "above" in window
    assert "a place trial" in window and "A smiling woman" in records.loc[2, "text"]
    assert "motion" not in records.loc[0, "text"]


def test_window_bounds_drop_the_incomplete_last_window() -> None:
    assert window_bounds(100, 0.8, 12.0).tolist() == [0.0, 12.0, 24.0, 36.0, 48.0, 60.0]
    assert window_bounds(5, 2.0, 12.0).size == 0
    with pytest.raises(ValueError, match="positive"):
        window_bounds(10, 2.0, 0.0)


def test_gradients_are_finite_when_networks_do_not_interact() -> None:
    from fmrilm_bids.fmrilm.descriptors.features import diffusion_map

    blocks = np.kron(np.eye(3), np.full((10, 10), 0.8))
    fc = blocks + 0.2 * np.eye(30) + 0.01 * np.random.default_rng(0).standard_normal((30, 30))
    gradients = diffusion_map((fc + fc.T) / 2, n_components=2)
    assert np.isfinite(gradients).all()
    block = np.repeat(np.arange(3), 10)
    centroids = np.stack([gradients[block == k].mean(axis=0) for k in range(3)])
    distances = np.linalg.norm(gradients[:, None] - centroids[None], axis=2)
    assert (distances.argmin(axis=1) == block).all()
