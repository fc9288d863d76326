"""fMRI-LM, the model, knowing nothing of BIDS: the descriptor corpus (:mod:`.descriptors`),
the neural tokenizer (:mod:`.tokenizer`), the language model (:mod:`.llm`), what both
training loops share (:mod:`.training`), the held-out split (:mod:`.splits`) and model
cards (:mod:`.card`). :mod:`fmrilm_bids.stages` runs it on a derivatives tree.
"""
