"""Citation boilerplate: the methods text of what a run did, as fMRIPrep writes it.

Each level that completes writes ``OUTPUT_DIR/logs/CITATION.md`` (participant level) or
``CITATION_group.md`` (group level), the same text as ``.html``, and the references it cites
as ``.bib``. The text names the software versions and the settings of the run, and cites
every tool and model that ran with pandoc-style keys (``[@avants2008]``) that the ``.bib``
file resolves. Copy it into a paper's methods section as it is, or edit it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fmrilm_bids.config import Config
from fmrilm_bids.utils.files import atomic_write_text

#: BibTeX entries of every tool, template, atlas and model the text can cite.
REFERENCES: dict[str, str] = {
    "wei2025": """@article{wei2025,
  author = {Wei and others},
  title = {{fMRI-LM}: language-aligned foundation models of {fMRI}},
  journal = {arXiv preprint},
  eprint = {2511.21760},
  archivePrefix = {arXiv},
  year = {2025},
  url = {https://arxiv.org/abs/2511.21760}
}""",
    "gorgolewski2011": """@article{gorgolewski2011,
  author = {Gorgolewski, Krzysztof and Burns, Christopher D. and Madison, Cindee and
            Clark, Dav and Halchenko, Yaroslav O. and Waskom, Michael L. and Ghosh, Satrajit S.},
  title = {Nipype: a flexible, lightweight and extensible neuroimaging data processing
           framework in Python},
  journal = {Frontiers in Neuroinformatics},
  volume = {5},
  pages = {13},
  year = {2011},
  doi = {10.3389/fninf.2011.00013}
}""",
    "esteban2019": """@article{esteban2019,
  author = {Esteban, Oscar and Markiewicz, Christopher J. and Blair, Ross W. and
            Moodie, Craig A. and Isik, A. Ilkay and Erramuzpe, Asier and Kent, James D. and
            Goncalves, Mathias and DuPre, Elizabeth and Snyder, Madeleine and others},
  title = {{fMRIPrep}: a robust preprocessing pipeline for functional {MRI}},
  journal = {Nature Methods},
  volume = {16},
  pages = {111--116},
  year = {2019},
  doi = {10.1038/s41592-018-0235-4}
}""",
    "yarkoni2019": """@article{yarkoni2019,
  author = {Yarkoni, Tal and Markiewicz, Christopher J. and de la Vega, Alejandro and
            Gorgolewski, Krzysztof J. and Salo, Taylor and Halchenko, Yaroslav O. and
            others},
  title = {{PyBIDS}: Python tools for {BIDS} datasets},
  journal = {Journal of Open Source Software},
  volume = {4},
  number = {40},
  pages = {1294},
  year = {2019},
  doi = {10.21105/joss.01294}
}""",
    "tustison2010": """@article{tustison2010,
  author = {Tustison, Nicholas J. and Avants, Brian B. and Cook, Philip A. and Zheng, Yuanjie
            and Egan, Alexander and Yushkevich, Paul A. and Gee, James C.},
  title = {{N4ITK}: improved {N3} bias correction},
  journal = {IEEE Transactions on Medical Imaging},
  volume = {29},
  number = {6},
  pages = {1310--1320},
  year = {2010},
  doi = {10.1109/TMI.2010.2046908}
}""",
    "avants2008": """@article{avants2008,
  author = {Avants, Brian B. and Epstein, Charles L. and Grossman, Murray and Gee, James C.},
  title = {Symmetric diffeomorphic image registration with cross-correlation: evaluating
           automated labeling of elderly and neurodegenerative brain},
  journal = {Medical Image Analysis},
  volume = {12},
  number = {1},
  pages = {26--41},
  year = {2008},
  doi = {10.1016/j.media.2007.06.004}
}""",
    "fonov2009": """@article{fonov2009,
  author = {Fonov, Vladimir S. and Evans, Alan C. and McKinstry, Robert C. and
            Almli, C. Robert and Collins, D. Louis},
  title = {Unbiased nonlinear average age-appropriate brain templates from birth to
           adulthood},
  journal = {NeuroImage},
  volume = {47, Supplement 1},
  pages = {S102},
  year = {2009},
  doi = {10.1016/S1053-8119(09)70884-5}
}""",
    "ciric2022": """@article{ciric2022,
  author = {Ciric, Rastko and Thompson, William H. and Lorenz, Romy and Goncalves, Mathias
            and MacNicol, Eilidh E. and Markiewicz, Christopher J. and Halchenko, Yaroslav O.
            and Ghosh, Satrajit S. and Gorgolewski, Krzysztof J. and Poldrack, Russell A.
            and Esteban, Oscar},
  title = {{TemplateFlow}: {FAIR}-sharing of multi-scale, multi-species brain models},
  journal = {Nature Methods},
  volume = {19},
  pages = {1568--1571},
  year = {2022},
  doi = {10.1038/s41592-022-01681-2}
}""",
    "mattes2003": """@article{mattes2003,
  author = {Mattes, David and Haynor, David R. and Vesselle, Hubert and Lewellen, Thomas K.
            and Eubank, William},
  title = {{PET-CT} image registration in the chest using free-form deformations},
  journal = {IEEE Transactions on Medical Imaging},
  volume = {22},
  number = {1},
  pages = {120--128},
  year = {2003},
  doi = {10.1109/TMI.2003.809072}
}""",
    "friston1996": """@article{friston1996,
  author = {Friston, Karl J. and Williams, Steven and Howard, Robert and
            Frackowiak, Richard S. J. and Turner, Robert},
  title = {Movement-related effects in {fMRI} time-series},
  journal = {Magnetic Resonance in Medicine},
  volume = {35},
  number = {3},
  pages = {346--355},
  year = {1996},
  doi = {10.1002/mrm.1910350312}
}""",
    "power2012": """@article{power2012,
  author = {Power, Jonathan D. and Barnes, Kelly A. and Snyder, Abraham Z. and
            Schlaggar, Bradley L. and Petersen, Steven E.},
  title = {Spurious but systematic correlations in functional connectivity {MRI} networks
           arise from subject motion},
  journal = {NeuroImage},
  volume = {59},
  number = {3},
  pages = {2142--2154},
  year = {2012},
  doi = {10.1016/j.neuroimage.2011.10.018}
}""",
    "power2014": """@article{power2014,
  author = {Power, Jonathan D. and Mitra, Anish and Laumann, Timothy O. and Snyder, Abraham Z.
            and Schlaggar, Bradley L. and Petersen, Steven E.},
  title = {Methods to detect, characterize, and remove motion artifact in resting state
           {fMRI}},
  journal = {NeuroImage},
  volume = {84},
  pages = {320--341},
  year = {2014},
  doi = {10.1016/j.neuroimage.2013.08.048}
}""",
    "behzadi2007": """@article{behzadi2007,
  author = {Behzadi, Yashar and Restom, Khaled and Liau, Joy and Liu, Thomas T.},
  title = {A component based noise correction method ({CompCor}) for {BOLD} and perfusion
           based {fMRI}},
  journal = {NeuroImage},
  volume = {37},
  number = {1},
  pages = {90--101},
  year = {2007},
  doi = {10.1016/j.neuroimage.2007.04.042}
}""",
    "jezzard1995": """@article{jezzard1995,
  author = {Jezzard, Peter and Balaban, Robert S.},
  title = {Correction for geometric distortion in echo planar images from {B0} field
           variations},
  journal = {Magnetic Resonance in Medicine},
  volume = {34},
  number = {1},
  pages = {65--73},
  year = {1995},
  doi = {10.1002/mrm.1910340111}
}""",
    "hutton2002": """@article{hutton2002,
  author = {Hutton, Chloe and Bork, Andreas and Josephs, Oliver and Deichmann, Ralf and
            Ashburner, John and Turner, Robert},
  title = {Image distortion correction in {fMRI}: a quantitative evaluation},
  journal = {NeuroImage},
  volume = {16},
  number = {1},
  pages = {217--240},
  year = {2002},
  doi = {10.1006/nimg.2001.1054}
}""",
    "herraez2002": """@article{herraez2002,
  author = {Herr{\\'a}ez, Miguel Arevallilo and Burton, David R. and Lalor, Michael J. and
            Gdeisat, Munther A.},
  title = {Fast two-dimensional phase-unwrapping algorithm based on sorting by reliability
           following a noncontinuous path},
  journal = {Applied Optics},
  volume = {41},
  number = {35},
  pages = {7437--7444},
  year = {2002},
  doi = {10.1364/AO.41.007437}
}""",
    "vanderwalt2014": """@article{vanderwalt2014,
  author = {van der Walt, St{\\'e}fan and Sch{\\"o}nberger, Johannes L. and
            Nunez-Iglesias, Juan and Boulogne, Fran{\\c{c}}ois and Warner, Joshua D. and
            Yager, Neil and Gouillart, Emmanuelle and Yu, Tony},
  title = {scikit-image: image processing in {Python}},
  journal = {PeerJ},
  volume = {2},
  pages = {e453},
  year = {2014},
  doi = {10.7717/peerj.453}
}""",
    "andersson2003": """@article{andersson2003,
  author = {Andersson, Jesper L. R. and Skare, Stefan and Ashburner, John},
  title = {How to correct susceptibility distortions in spin-echo echo-planar images:
           application to diffusion tensor imaging},
  journal = {NeuroImage},
  volume = {20},
  number = {2},
  pages = {870--888},
  year = {2003},
  doi = {10.1016/S1053-8119(03)00336-7}
}""",
    "abraham2014": """@article{abraham2014,
  author = {Abraham, Alexandre and Pedregosa, Fabian and Eickenberg, Michael and
            Gervais, Philippe and Mueller, Andreas and Kossaifi, Jean and Gramfort, Alexandre
            and Thirion, Bertrand and Varoquaux, Ga{\\"e}l},
  title = {Machine learning for neuroimaging with scikit-learn},
  journal = {Frontiers in Neuroinformatics},
  volume = {8},
  pages = {14},
  year = {2014},
  doi = {10.3389/fninf.2014.00014}
}""",
    "tzouriomazoyer2002": """@article{tzouriomazoyer2002,
  author = {Tzourio-Mazoyer, Nathalie and Landeau, Brigitte and Papathanassiou, Dimitri and
            Crivello, Fabrice and Etard, Octave and Delcroix, Nicolas and Mazoyer, Bernard and
            Joliot, Marc},
  title = {Automated anatomical labeling of activations in {SPM} using a macroscopic
           anatomical parcellation of the {MNI} {MRI} single-subject brain},
  journal = {NeuroImage},
  volume = {15},
  number = {1},
  pages = {273--289},
  year = {2002},
  doi = {10.1006/nimg.2001.0978}
}""",
    "rolls2020": """@article{rolls2020,
  author = {Rolls, Edmund T. and Huang, Chu-Chung and Lin, Ching-Po and Feng, Jianfeng and
            Joliot, Marc},
  title = {Automated anatomical labelling atlas 3},
  journal = {NeuroImage},
  volume = {206},
  pages = {116189},
  year = {2020},
  doi = {10.1016/j.neuroimage.2019.116189}
}""",
    "huang2022": """@article{huang2022,
  author = {Huang, Chu-Chung and Rolls, Edmund T. and Feng, Jianfeng and Lin, Ching-Po},
  title = {An extended Human Connectome Project multimodal parcellation atlas of the human
           cortex and subcortical areas},
  journal = {Brain Structure and Function},
  volume = {227},
  pages = {763--778},
  year = {2022},
  doi = {10.1007/s00429-021-02421-6}
}""",
    "hu2022": """@inproceedings{hu2022,
  author = {Hu, Edward J. and Shen, Yelong and Wallis, Phillip and Allen-Zhu, Zeyuan and
            Li, Yuanzhi and Wang, Shean and Wang, Lu and Chen, Weizhu},
  title = {{LoRA}: low-rank adaptation of large language models},
  booktitle = {International Conference on Learning Representations},
  year = {2022},
  url = {https://openreview.net/forum?id=nZeVKeeFYf9}
}""",
    "vandenoord2017": """@inproceedings{vandenoord2017,
  author = {van den Oord, Aaron and Vinyals, Oriol and Kavukcuoglu, Koray},
  title = {Neural discrete representation learning},
  booktitle = {Advances in Neural Information Processing Systems},
  volume = {30},
  year = {2017}
}""",
    "allal2025": """@article{allal2025,
  author = {Ben Allal, Loubna and Lozhkov, Anton and Bakouch, Elie and others},
  title = {{SmolLM2}: when Smol goes big -- data-centric training of a small language model},
  journal = {arXiv preprint},
  eprint = {2502.02737},
  archivePrefix = {arXiv},
  year = {2025}
}""",
    "reimers2019": """@inproceedings{reimers2019,
  author = {Reimers, Nils and Gurevych, Iryna},
  title = {Sentence-{BERT}: sentence embeddings using {Siamese} {BERT}-networks},
  booktitle = {Proceedings of the 2019 Conference on Empirical Methods in Natural Language
               Processing},
  pages = {3982--3992},
  year = {2019},
  doi = {10.18653/v1/D19-1410}
}""",
}

#: The references of the bundled atlases.
ATLAS_REFERENCES = {"AAL": "tzouriomazoyer2002", "AAL3": "rolls2020", "HCPEx": "huang2022"}
_CITE = re.compile(r"\[@([^\]]+)\]")


@dataclass(frozen=True)
class RunFacts:
    """What a level worked on, beyond its settings: the text reports these counts.

    Attributes
    ----------
    participants : int
        Participants processed.
    runs : int
        BOLD runs processed.
    slice_timed : int
        Runs with a usable ``SliceTiming`` (slice-timing corrected).
    denoising : str
        The confound strategy in words (``Strategy.description``).
    sdc : dict
        Runs corrected for susceptibility distortions, by method (``phasediff``,
        ``pepolar``).
    tokenizer_training : dict
        The group level's Stage-1 training settings as the model recorded them
        (``stage1.json``'s ``Training``: ``steps``, or ``epochs`` and ``min_steps``).
    """

    participants: int
    runs: int
    slice_timed: int
    denoising: str
    sdc: Mapping[str, int] = field(default_factory=dict)
    tokenizer_training: Mapping[str, object] = field(default_factory=dict)


def _atlases(config: Config, first_only: bool = False) -> str:
    """The atlases of the run, cited (the group level models the first only)."""
    names = []
    for atlas in config.workflow.atlases[:1] if first_only else config.workflow.atlases:
        key = ATLAS_REFERENCES.get(str(atlas))
        names.append(f"{atlas} [@{key}]" if key else f"a user atlas ({Path(atlas).name})")
    return ", ".join(names)


def participant_paragraphs(config: Config, facts: RunFacts,
                           versions: Mapping[str, str]) -> list[tuple[str, str]]:
    """The participant level's methods, as ``(heading, paragraph)`` pairs.

    Parameters
    ----------
    config : Config
        The run's settings.
    facts : RunFacts
        What the run worked on.
    versions : mapping
        Distribution name -> version (:func:`fmrilm_bids.utils.versions.software_versions`).
    """
    wf = config.workflow
    v = versions.get
    intro = (
        f"Results included in this manuscript come from preprocessing performed using "
        f"*fmrilm-bids* {v('fmrilm-bids')} [@wei2025], which is based on *Nipype* "
        f"{v('nipype')} [@gorgolewski2011] and follows *fMRIPrep* [@esteban2019]. The input "
        f"dataset was indexed with *PyBIDS* [@yarkoni2019]; {facts.participants} "
        f"participant(s) and {facts.runs} BOLD run(s) were processed."
    )
    parts = [("Preprocessing", intro)]
    if "fmriprep" in config.execution.derivatives:
        parts.append(("Functional data", (
            "The BOLD runs had been preprocessed with *fMRIPrep* [@esteban2019]; its "
            "template-space preprocessed BOLD series, brain masks and confounds were used "
            "as they are.")))
    else:
        template_ref = " [@fonov2009]" if wf.template.startswith("MNI152NLin2009") else ""
        sloppy = " with a fast, coarse optimisation (`--sloppy`, testing only)" if wf.sloppy \
            else ""
        parts.append(("Anatomical data", (
            f"The T1-weighted (T1w) image was corrected for intensity non-uniformity with "
            f"N4 [@tustison2010] (*ANTs*, through antspyx {v('antspyx')}). It was registered "
            f"to the {wf.template} template{template_ref} (TemplateFlow res-"
            f"{wf.template_resolution}, served "
            f"through *TemplateFlow* {v('templateflow')} [@ciric2022]) with an affine "
            f"transform followed by symmetric normalisation (SyN) [@avants2008] driven by "
            f"mutual information [@mattes2003]{sloppy}. The T1w brain mask is the "
            f"template's brain mask carried back through that transform.")))
        if len(wf.spaces) > 1:
            parts.append(("Further output spaces", (
                "The T1w was also registered (affine and SyN, as above) to "
                + ", ".join(space.label for space in wf.spaces[1:]) + ", and the BOLD runs "
                "were resampled into each of them in one step.")))
        dummies = ("detected from the global signal" if wf.dummy_scans is None
                   else f"set to {wf.dummy_scans}")
        stc = (f"slice-timing correction (cubic interpolation to the middle of the "
               f"acquisition) was applied to the {facts.slice_timed} run(s) with a known "
               f"`SliceTiming`" if facts.slice_timed else
               "no slice-timing correction was applied (`SliceTiming` not known)")
        corrected = sum(facts.sdc.values())
        unwarped = (" (for the runs corrected for susceptibility distortions, the unwarped "
                    "reference)" if corrected else "")
        sdc_step = (" Head motion, the susceptibility distortion, coregistration and "
                    if corrected else " Head motion, coregistration and ")
        parts.append(("Functional data", (
            f"For each BOLD run, non-steady-state volumes were {dummies}. A reference volume "
            f"(the mean of up to 20 realigned steady-state volumes) was computed and head "
            f"motion was estimated by rigid least-squares realignment to it; {stc}. The "
            f"reference{unwarped} was coregistered to the T1w brain with a rigid, "
            f"mutual-information registration [@mattes2003] (*ANTs*).{sdc_step}"
            f"normalisation were composed and applied in one cubic-spline resampling onto "
            f"the {wf.template} grid (res-{wf.template_resolution}). Confounds were "
            f"computed as in *fMRIPrep*: the 6 motion parameters with their derivatives and "
            f"squares [@friston1996], framewise displacement and DVARS [@power2012], the "
            f"global, white-matter and CSF signals, and anatomical CompCor components "
            f"[@behzadi2007] from the template's tissue priors.")))
        parts.append(("Susceptibility distortion correction", _sdc_paragraph(config, facts)))
    scrub = (f" Volumes with framewise displacement above {wf.fd_threshold} mm, and kept "
             f"segments shorter than 5 volumes, were censored [@power2014]." if wf.scrub else "")
    parts.append(("Denoising and parcellation", (
        f"Parcel mean time series were extracted with the {_atlases(config)} atlas(es) "
        f"(*nilearn* {v('nilearn')} [@abraham2014]) and regressed on {facts.denoising} "
        f"(`--denoise-strategy {wf.denoise_strategy}`), together with a cosine high-pass "
        f"filter at {wf.high_pass} Hz; non-steady-state volumes were dropped and each "
        f"series was z-scored.{scrub}")))
    if wf.model_dir:
        parts.append(("fMRI-LM", (
            f"A trained fMRI-LM model [@wei2025] ({wf.model_dir.name}) was applied to every "
            f"run: imaging descriptors graded against the model's saved cohort reference, "
            f"discrete fMRI tokens from its neural tokenizer [@vandenoord2017], and "
            f"captions, embeddings and answers from its language model.")))
    return [*parts, _software(versions)]


def _sdc_paragraph(config: Config, facts: RunFacts) -> str:
    """What was done about susceptibility distortions (fMRIPrep/SDCflows' methods)."""
    corrected = sum(facts.sdc.values())
    if not corrected:
        why = ("field maps were ignored (`--ignore fieldmaps`)"
               if "fieldmaps" in config.workflow.ignore else
               "no usable field map was intended for any run")
        return f"No susceptibility distortion correction was applied: {why}."
    estimates = []
    if facts.sdc.get("phasediff"):
        estimates.append(
            f"for {facts.sdc['phasediff']} run(s), from a phase-difference map and its "
            "magnitude: the phase difference was unwrapped within the magnitude's brain mask "
            "[@herraez2002] (*scikit-image* [@vanderwalt2014]) and divided by 2 pi times the "
            "echo-time difference")
    if facts.sdc.get("pepolar"):
        estimates.append(
            f"for {facts.sdc['pepolar']} run(s), from EPI references acquired with opposite "
            "phase-encoding polarities (PEPOLAR), by least squares on the two images unwarped "
            "along the phase-encoding axis with a smooth field, as *TOPUP* does "
            "[@andersson2003]")
    jacobian = ("" if "fmap-jacobian" not in config.workflow.ignore else
                " The Jacobian intensity correction was left out (`--ignore fmap-jacobian`).")
    remaining = facts.runs - corrected
    rest = f" The other {remaining} run(s) had no usable field map." if remaining else ""
    return (
        f"A B0 non-uniformity map (field map) was estimated "
        f"{'; and '.join(estimates)} [@jezzard1995; @hutton2002]. The field map (Hz) was "
        "smoothed and extrapolated beyond the brain, registered rigidly to the BOLD "
        "reference through its reference image (*ANTs*, mutual information), and turned "
        "into a voxel shift map along the phase-encoding direction (field times the total "
        "readout time), as *SDCflows* of *fMRIPrep* [@esteban2019] does. The displacement "
        "and its Jacobian intensity correction were applied within the one resampling of "
        f"each run.{jacobian}{rest}")


def group_paragraphs(config: Config, facts: RunFacts,
                     versions: Mapping[str, str]) -> list[tuple[str, str]]:
    """The group level's methods, as ``(heading, paragraph)`` pairs (see
    :func:`participant_paragraphs`)."""
    wf = config.workflow
    v = versions.get
    llm = (f"the local causal language model in `{wf.llm_dir.name}`" if wf.llm_dir else
           "SmolLM2-135M-Instruct [@allal2025]")
    reference = (f"the participants of group '{wf.reference_group}'" if wf.reference_group
                 else "all selected runs")
    networks = ("the atlas's network table" if wf.networks == "atlas" else
                "clustering of the cohort's functional connectivity")
    zero_shot = (f" The questions {', '.join(wf.zero_shot)} were kept out of tuning and "
                 f"evaluated zero-shot and few-shot ({wf.few_shot_k} examples per class)."
                 if wf.zero_shot else "")
    training = facts.tokenizer_training
    tokenizer_length = (
        f" ({training['steps']} steps)" if training.get("steps") else
        f" ({training['epochs']:g} passes over the training windows, at least "
        f"{training['min_steps']} steps)" if training else "")
    lm_length = (f"{wf.lm_steps} steps per stage" if wf.lm_steps else
                 f"{wf.lm_epochs[0]:g} and {wf.lm_epochs[1]:g} epochs")
    inputs = ("each token's continuous Stage-1 features, standardised with the training "
              "tokens' means and standard deviations, through a learned linear projection"
              if wf.fmri_inputs == "continuous" else "the tokens' own embeddings")
    text = (
        f"fMRI-LM [@wei2025] was trained with *fmrilm-bids* {v('fmrilm-bids')} (*PyTorch* "
        f"{v('torch')}, *Transformers* {v('transformers')}, *PEFT* {v('peft')}) on the "
        f"denoised parcel time series of {facts.participants} participant(s) "
        f"({facts.runs} run(s); {_atlases(config, first_only=True)} atlas, parcels grouped "
        f"into networks by "
        f"{networks}); a seeded quarter of the participants was held out for evaluation "
        f"(seed {config.seeds.master}). Imaging descriptors (network connectivity, graph "
        f"metrics, gradients, ICA, amplitude and motion) were z-scored against {reference} "
        f"and written as sentences. Stage 1: a neural tokenizer reading each 12 s window as "
        f"one token per learned parcel group from a shared codebook (vector quantization "
        f"[@vandenoord2017]) was trained{tokenizer_length}, aligned contrastively to the "
        f"language model's input embeddings of the descriptor text and of what was shown. "
        f"Stages 2 and 3: {llm} was extended with the codebook's tokens and read "
        f"{inputs}; it was tuned with LoRA adapters [@hu2022] ({lm_length}, packed "
        f"sequences), first on fMRI tokens (the codes as next-token targets) and descriptor "
        f"text, then on questions built from the dataset.{zero_shot} Held-out results were "
        f"compared with parcel-amplitude, functional-connectivity and token baselines; the "
        f"caption "
        f"embeddings use all-MiniLM-L6-v2 (*sentence-transformers* "
        f"{v('sentence-transformers')}) [@reimers2019]."
    )
    return [("fMRI-LM training", text), _software(versions)]


def _software(versions: Mapping[str, str]) -> tuple[str, str]:
    listed = ", ".join(f"{name} {version}" for name, version in versions.items())
    return ("Software", f"Software versions: {listed}.")


def cited_keys(paragraphs: Sequence[tuple[str, str]]) -> list[str]:
    """The reference keys cited in ``paragraphs``, in order of first citation."""
    keys: list[str] = []
    for _, text in paragraphs:
        for group in _CITE.findall(text):
            for key in (k.strip().lstrip("@") for k in group.split(";")):
                if key not in keys:
                    keys.append(key)
    return keys


def to_markdown(paragraphs: Sequence[tuple[str, str]], bib_name: str = "CITATION.bib") -> str:
    """The boilerplate as Markdown (pandoc citations, resolved by the ``.bib`` file)."""
    body = "\n\n".join(f"## {heading}\n\n{text}" for heading, text in paragraphs)
    return f"# Methods\n\n{body}\n\n## References\n\nThe keys cited are in `{bib_name}`.\n"


def to_html(paragraphs: Sequence[tuple[str, str]]) -> str:
    """The boilerplate as a standalone HTML page, citations numbered and listed."""
    keys = cited_keys(paragraphs)
    number = {key: index for index, key in enumerate(keys, start=1)}

    def render(text: str) -> str:
        escaped = html.escape(text)
        escaped = re.sub(r"\*([^*]+)\*", r"<em>\1</em>", escaped)
        escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
        return _CITE.sub(lambda m: "[" + ", ".join(
            f'<a href="#ref-{key}">{number[key]}</a>'
            for key in (k.strip().lstrip("@") for k in m.group(1).split(";"))) + "]", escaped)

    sections = "\n".join(f"<h2>{html.escape(heading)}</h2>\n<p>{render(text)}</p>"
                         for heading, text in paragraphs)
    references = "\n".join(
        f'<li id="ref-{key}"><pre>{html.escape(REFERENCES[key])}</pre></li>' for key in keys)
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Methods</title>"
            "</head><body>\n<h1>Methods</h1>\n" + sections
            + f"\n<h2>References</h2>\n<ol>\n{references}\n</ol>\n</body></html>\n")


def to_bibtex(paragraphs: Sequence[tuple[str, str]]) -> str:
    """The BibTeX entries cited in ``paragraphs``, in order of first citation."""
    return "\n\n".join(REFERENCES[key] for key in cited_keys(paragraphs)) + "\n"


def write_citation(log_root: Path, paragraphs: Sequence[tuple[str, str]],
                   stem: str = "CITATION") -> list[Path]:
    """Write ``<stem>.md``, ``.html`` and ``.bib`` into ``log_root``, atomically.

    Returns
    -------
    list of Path
        The three files.
    """
    unknown = [key for key in cited_keys(paragraphs) if key not in REFERENCES]
    if unknown:
        raise KeyError(f"no reference for {', '.join(unknown)}")
    log_root = Path(log_root)
    texts = {".md": to_markdown(paragraphs, f"{stem}.bib"), ".html": to_html(paragraphs),
             ".bib": to_bibtex(paragraphs)}
    return [atomic_write_text(log_root / f"{stem}{ext}", text) for ext, text in texts.items()]
