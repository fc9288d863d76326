"""Stimulus models: single-trial responses (LSS), stimulus text features, the caption-aligned
voxel-wise encoding model (LLM-VEM), selectivity captions (BrainSCUBA, LaVCa), and decoders
from responses to the embedding of what was seen (BrainCLIP, MindEye), shared across
subjects through linear adapters (See Through Their Minds, MindBridge), with their readouts
and network attribution.

Pure functions on arrays and tables, knowing nothing of nipype or BIDS paths; the interfaces
in :mod:`fmrilm_bids.interfaces.stimulus` and :mod:`fmrilm_bids.interfaces.decoding` run
them on a participant's derivatives, :mod:`fmrilm_bids.stages.decoding` across participants.
"""
