"""Runtime helpers that know nothing of fMRI: atomic files and folders (:mod:`.files`), devices
and data-parallel processes (:mod:`.devices`, :mod:`.launch`), the process environment and
caches (:mod:`.environment`), software versions (:mod:`.versions`).
"""
