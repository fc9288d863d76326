"""Facts turned into sentences: graded wording and paraphrase templates.

A fact is one feature with its value and z-score. Its sentence names what was measured, a
grade read from the z-score (rounded to one decimal, as printed) and the numbers, e.g.
``"Coupling between the default mode and visual networks is markedly reduced (r=0.12,
z=-2.3)."``. Each fact kind has several subject phrasings, each grade several wordings and
the sentence several frames; a :class:`numpy.random.Generator` picks among them, so a seed
gives the same text and different seeds give paraphrases of the same facts. Every sentence
states exactly one fact, always as ``<label>=<value>`` then ``z=<signed z>``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from fmrilm_bids.fmrilm.descriptors.networks import display_name

#: Upper bounds (exclusive) of the z-score grades, in increasing order.
GRADE_BOUNDS: tuple[tuple[float, str], ...] = (
    (-2.0, "markedly_low"), (-1.0, "low"), (-0.5, "slightly_low"), (0.5, "typical"),
    (1.0, "slightly_high"), (2.0, "high"), (math.inf, "markedly_high"),
)

#: Wordings of each grade.
GRADE_WORDS: dict[str, tuple[str, ...]] = {
    "markedly_low": ("markedly reduced", "far below the reference", "strongly decreased"),
    "low": ("reduced", "below the reference", "decreased"),
    "slightly_low": ("slightly reduced", "a little below the reference", "mildly decreased"),
    "typical": ("typical", "within the reference range", "close to the reference"),
    "slightly_high": ("slightly elevated", "a little above the reference",
                      "mildly increased"),
    "high": ("elevated", "above the reference", "increased"),
    "markedly_high": ("markedly elevated", "far above the reference", "strongly increased"),
}

#: Per fact kind: subject phrasings ({a}, {b}: networks; {ordinal}: gradient; {network}: the
#: annotated network) and the label of the value.
FACT_PHRASES: dict[str, tuple[tuple[str, ...], str]] = {
    "fc_within": (("connectivity within the {a} network",
                   "coupling among {a} network regions",
                   "within-network coupling of the {a} network"), "r"),
    "fc_between": (("coupling between the {a} and {b} networks",
                    "connectivity of the {a} network with the {b} network",
                    "{a}-{b} network coupling"), "r"),
    "graph.global_efficiency": (("global efficiency of the connectome",
                                 "integration of the whole-brain graph (global efficiency)",
                                 "the graph's global efficiency"), "E"),
    "graph.modularity": (("modularity of the connectome",
                          "segregation of the connectome into modules",
                          "the graph's modularity"), "Q"),
    "graph.clustering": (("clustering of the connectome",
                          "local clustering of the whole-brain graph",
                          "the mean clustering coefficient"), "C"),
    "strength": (("connectivity strength of the {a} network",
                  "the {a} network's node strength",
                  "overall connectedness of the {a} network"), "strength"),
    "gradient": (("the position of the {a} network on the {ordinal} gradient",
                  "where the {a} network sits on the {ordinal} functional gradient",
                  "the {a} network's {ordinal}-gradient score"), "position"),
    "ica.top_share": (("the variance share of the strongest independent component "
                       "(centred on the {network} network)",
                       "the weight of the leading ICA component, mostly {network} regions",
                       "how much the dominant independent component ({network} network) "
                       "explains"), "share"),
    "ica.low_high_ratio": (("the slow-to-fast power ratio of the independent components",
                            "low- versus high-frequency power in the ICA components",
                            "the spectral low/high ratio of the independent components"),
                           "ratio"),
    "ica.autocorrelation": (("the temporal autocorrelation of the independent components",
                             "the smoothness in time of the ICA components",
                             "lag-1 autocorrelation of the independent components"),
                            "autocorrelation"),
    "amplitude": (("signal amplitude in the {a} network",
                   "the {a} network's fluctuation amplitude",
                   "BOLD amplitude of the {a} network"), "SD"),
    "falff": (("fractional low-frequency amplitude (fALFF) of the {a} network",
               "the {a} network's fALFF",
               "the low-frequency power share of the {a} network"), "fALFF"),
    "motion.mean_fd": (("head motion (mean framewise displacement, mm)",
                        "mean framewise displacement (mm)",
                        "average head movement (mm)"), "FD"),
    "motion.max_fd": (("the largest head movement (mm)",
                       "peak framewise displacement (mm)",
                       "the worst volume-to-volume motion (mm)"), "FD"),
    "motion.high_fd_fraction": (("the share of high-motion volumes",
                                 "the fraction of volumes with large head movement",
                                 "how many volumes move too much"), "share"),
}

#: Sentence frames of a graded fact.
GRADED_FRAMES = ("{Subject} is {grade} ({stats}).", "{Subject}: {grade} ({stats}).",
                 "In this run, {subject} is {grade} ({stats}).")
#: Sentence frames of a fact with no reference to grade it.
UNGRADED_FRAMES = ("{Subject} is {stats}.", "{Subject}: {stats}.",
                   "In this run, {subject} is {stats}.")

#: Opening sentences of a run description.
RUN_INTROS = (
    "This {duration:.0f}-second run is summarised over {n_parcels} regions in {n_networks} "
    "networks.",
    "The scan lasts {duration:.0f} s; its {n_parcels} regions form {n_networks} networks.",
    "Summary of a {duration:.0f} s scan ({n_parcels} regions, {n_networks} networks).",
)
#: Sentences that say what the z-scores are relative to.
REFERENCE_INTROS = ("Each z-score compares the run with {reference}.",
                    "Grades are relative to {reference}.",
                    "The reference is {reference}.")
#: Closing sentence when no other feature departs from the reference.
TYPICAL_CLOSINGS = ("Other features are within the reference range.",
                    "Nothing else departs from the reference.",
                    "The remaining features look typical.")

ORDINALS = ("principal", "second", "third", "fourth", "fifth")

#: Order of the fact kinds in a run description.
KIND_ORDER = ("motion", "graph", "fc", "strength", "gradient", "ica", "amplitude", "falff")

#: Window sentences. {above}/{below}: network lists with levels.
WINDOW_ACTIVITY = {
    "both": ("The {above} {above_noun} {above_verb} above baseline; the {below} {below_noun} "
             "{below_verb} below baseline.",
             "Activity rises above baseline in the {above} {above_noun} and falls below it in "
             "the {below} {below_noun}."),
    "above": ("The {above} {above_noun} {above_verb} above baseline.",
              "Activity rises above baseline in the {above} {above_noun}."),
    "below": ("The {below} {below_noun} {below_verb} below baseline.",
              "Activity falls below baseline in the {below} {below_noun}."),
    "neither": ("All networks stay near baseline.", "No network departs from baseline."),
}
#: Synchrony sentences by grade; {r}: mean correlation between network signals.
WINDOW_SYNCHRONY = {
    "low": ("Networks are weakly synchronised (r={r}).",
            "Network signals are loosely coupled (r={r})."),
    "typical": ("Networks are moderately synchronised (r={r}).",
                "Network signals are coupled as usual for this run (r={r})."),
    "high": ("Networks are strongly synchronised (r={r}).",
             "Network signals are tightly coupled (r={r})."),
}
#: Event sentences; {events}: captions (or trial types) joined by "; ".
WINDOW_EVENTS = ("The participant is viewing: {events}.", "Stimulus shown: {events}.",
                 "During this window the participant sees: {events}.")


def grade(z: float) -> str:
    """Grade of a z-score, read from its value rounded to one decimal (as printed)."""
    z = round(z, 1)
    return next(name for upper, name in GRADE_BOUNDS if z < upper)


def format_number(value: float) -> str:
    """Three significant figures, in plain decimal notation."""
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fact_kind(key: str) -> tuple[str, dict[str, str]]:
    """Phrase kind of a feature key and its placeholders (networks, gradient ordinal)."""
    kind, _, argument = key.partition(".")
    if kind == "fc":
        first, second = argument.split("~")
        if first == second:
            return "fc_within", {"a": display_name(first)}
        return "fc_between", {"a": display_name(first), "b": display_name(second)}
    if kind.startswith("gradient"):
        return "gradient", {"a": display_name(argument),
                            "ordinal": ORDINALS[int(kind.removeprefix("gradient")) - 1]}
    if kind in ("strength", "amplitude", "falff"):
        return kind, {"a": display_name(argument)}
    return key, {}


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def fact_sentence(key: str, value: float, z: float | None, rng: np.random.Generator,
                  annotations: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """The sentence stating one fact, and its grade (None without a z-score).

    Parameters
    ----------
    key : str
        Feature key.
    value : float
    z : float or None
    rng : numpy.random.Generator
        Picks the phrasing.
    annotations : mapping, optional
        Named facts used by some phrases (``ica.top_network``).
    """
    kind, fields = fact_kind(key)
    phrases, label = FACT_PHRASES[kind]
    if "ica.top_network" in (annotations or {}):
        fields["network"] = display_name(annotations["ica.top_network"])
    subject = phrases[rng.integers(len(phrases))].format(**fields)
    stats = f"{label}={format_number(value)}"
    if z is None:
        frame = UNGRADED_FRAMES[rng.integers(len(UNGRADED_FRAMES))]
        return frame.format(Subject=_capitalise(subject), subject=subject, stats=stats), None
    level = grade(z)
    words = GRADE_WORDS[level]
    frame = GRADED_FRAMES[rng.integers(len(GRADED_FRAMES))]
    sentence = frame.format(Subject=_capitalise(subject), subject=subject,
                            grade=words[rng.integers(len(words))],
                            stats=f"{stats}, z={round(z, 1) + 0.0:+.1f}")
    return sentence, level


def select_facts(values: Mapping[str, float], zscores: Mapping[str, float | None],
                 max_facts: int = 8, min_salient_z: float = 0.5) -> list[str]:
    """Feature keys a run description states, in reading order.

    Always: mean framewise displacement (when present), global efficiency and modularity;
    then the features furthest from the reference (``|z| >= min_salient_z``, largest first)
    up to ``max_facts``. Ordered by :data:`KIND_ORDER`, then by decreasing ``|z|``.
    """
    core = [key for key in ("motion.mean_fd", "graph.global_efficiency", "graph.modularity")
            if key in values]
    graded = [(abs(z), key) for key, z in zscores.items()
              if z is not None and key not in core and abs(round(z, 1)) >= min_salient_z]
    graded.sort(key=lambda item: (-item[0], item[1]))
    chosen = core + [key for _, key in graded[: max(0, max_facts - len(core))]]

    def reading_order(key: str) -> tuple[int, float, str]:
        kind = re.sub(r"\d+$", "", key.partition(".")[0])
        z = zscores.get(key)
        return KIND_ORDER.index(kind), -abs(z) if z is not None else 0.0, key

    return sorted(chosen, key=reading_order)


def run_text(facts: Sequence[Mapping[str, object]], context: Mapping[str, object],
             seed: int | Sequence[int] = 0) -> tuple[str, list[dict[str, object]]]:
    """Render a run description.

    Parameters
    ----------
    facts : sequence of mapping
        Each with ``feature``, ``value`` and ``z`` (None when ungraded), in reading order.
    context : mapping
        ``duration`` (s), ``n_parcels``, ``n_networks``, ``reference`` (a description, or
        None) and ``annotations`` (mapping).
    seed : int or sequence of int
        Chooses the paraphrase (any :func:`numpy.random.default_rng` seed).

    Returns
    -------
    text : str
    rendered : list of dict
        The facts with their ``sentence`` and ``grade`` added.
    """
    rng = np.random.default_rng(seed)
    sentences = [RUN_INTROS[rng.integers(len(RUN_INTROS))].format(**context)]
    if context.get("reference"):
        sentences.append(REFERENCE_INTROS[rng.integers(len(REFERENCE_INTROS))]
                         .format(reference=context["reference"]))
    rendered = []
    for fact in facts:
        sentence, level = fact_sentence(str(fact["feature"]), float(fact["value"]),
                                        fact["z"], rng, context.get("annotations"))
        rendered.append(dict(fact) | {"sentence": sentence, "grade": level})
        sentences.append(sentence)
    graded = [fact for fact in rendered if fact["grade"] is not None]
    if graded and all(fact["grade"] == "typical" for fact in graded):
        sentences.append(TYPICAL_CLOSINGS[rng.integers(len(TYPICAL_CLOSINGS))])
    return " ".join(sentences), rendered


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def window_text(levels: Mapping[str, float], synchrony: float | None,
                synchrony_grade: str | None, events: Sequence[str], threshold: float,
                seed: int | Sequence[int] = 0) -> str:
    """Render one window: networks above/below baseline, synchrony, stimuli.

    Parameters
    ----------
    levels : mapping
        Network -> mean level in the window (run-standardised units, SD).
    synchrony : float or None
        Mean correlation between network signals in the window.
    synchrony_grade : {"low", "typical", "high"} or None
    events : sequence of str
        What was shown (captions or trial types), HRF-aligned to the window.
    threshold : float
        Level (SD) beyond which a network counts as above or below baseline.
    seed : int or sequence of int
        Chooses the paraphrase (any :func:`numpy.random.default_rng` seed).
    """
    rng = np.random.default_rng(seed)
    above = sorted(((v, n) for n, v in levels.items() if v >= threshold), reverse=True)
    below = sorted((v, n) for n, v in levels.items() if v <= -threshold)
    fields = {}
    for side, chosen in (("above", above), ("below", below)):
        fields[side] = _join([f"{display_name(n)} ({v:+.1f} SD)" for v, n in chosen] or [""])
        fields[f"{side}_noun"] = "networks" if len(chosen) > 1 else "network"
        fields[f"{side}_verb"] = "are" if len(chosen) > 1 else "is"
    case = ("both" if above and below else "above" if above else "below" if below
            else "neither")
    options = WINDOW_ACTIVITY[case]
    sentences = [options[rng.integers(len(options))].format(**fields)]
    if synchrony is not None and synchrony_grade is not None:
        options = WINDOW_SYNCHRONY[synchrony_grade]
        sentences.append(options[rng.integers(len(options))].format(r=f"{synchrony:.2f}"))
    if events:
        listed = "; ".join(event.strip().rstrip(".") for event in events)
        sentences.append(WINDOW_EVENTS[rng.integers(len(WINDOW_EVENTS))].format(events=listed))
    return " ".join(sentences)
