"""The maths of preprocessing, as pure functions on arrays and images (unit-testable without
nipype): motion, slice timing, registration, resampling, confounds, denoising,
parcellation. :mod:`fmrilm_bids.interfaces` wraps them for the workflows.
"""
