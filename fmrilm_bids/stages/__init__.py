"""fMRI-LM on a BIDS derivatives tree: the participant level's outputs read back
(:mod:`.inputs`), model outputs written (:mod:`.outputs`), the Stage-1 model folder
(:mod:`.bundle`), Stage 1 (:mod:`.stage1`), Stages 2-3 (:mod:`.language`), the decoders
across participants (:mod:`.decoding`), and the two commands: ``group`` (:mod:`.group`) and
``participant --model`` (:mod:`.participant`).
"""
