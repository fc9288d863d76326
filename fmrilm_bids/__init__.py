"""fmrilm-bids: a BIDS-App that turns fMRI into language (fMRI-LM, Wei et al., 2025)."""

try:
    from ._version import __version__
except ImportError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
