"""What ships with the package or its dependencies, found offline: the MNI152NLin2009aSym
template (:mod:`.templates`), the atlases (:mod:`.atlases`), the sentence encoder
(:mod:`.text_encoder`), and ``data/`` (network tables of the bundled atlases).
"""
