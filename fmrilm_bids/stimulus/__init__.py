"""Stimulus models: single-trial responses (LSS), stimulus text features, the caption-aligned
voxel-wise encoding model (LLM-VEM) and selectivity captions (BrainSCUBA, LaVCa).

Pure functions on arrays and tables, knowing nothing of nipype or BIDS paths; the interfaces
in :mod:`fmrilm_bids.interfaces.stimulus` run them on a participant's derivatives.
"""
