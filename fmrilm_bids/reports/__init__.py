"""The HTML reports: figures (:mod:`.figures`) and pages (:mod:`.html`).
"""
