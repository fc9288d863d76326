"""Errors that end a run with one clear line and a documented exit code.

Exit codes (also in the README): 0 success; 1 the workflow ran and a node failed; 2 usage
(argparse); 64 and up, bad input (see :class:`InputError` subclasses); 70 software error;
75 the work dir is busy with another run.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_DATA = 65  # the input data are wrong (EX_DATAERR)
EXIT_NO_INPUT = 66  # an input is missing or matched nothing (EX_NOINPUT)
EXIT_SOFTWARE = 70  # a bug (EX_SOFTWARE)
EXIT_CANT_CREATE = 73  # an output cannot be written (EX_CANTCREAT)
EXIT_TEMP_FAIL = 75  # another run holds the work dir: try again later (EX_TEMPFAIL)

#: What each non-zero exit code means (the README's table; the Boutiques descriptor's
#: ``error-codes``).
EXIT_MEANINGS = {
    EXIT_RUN_FAILED: "the run started and a processing step failed (crash files in "
    "OUTPUT_DIR/logs/)",
    EXIT_USAGE: "usage error (bad flags, output dir equal to the input, work dir inside the "
    "input)",
    EXIT_DATA: "bad input data (not 4-D, no RepetitionTime, corrupt or truncated NIfTI, bad "
    "events, validator errors, bad settings file, a run with a field map but no "
    "PhaseEncodingDirection or readout time)",
    EXIT_NO_INPUT: "missing input (not a folder, unknown participant/session/task, nothing "
    "matched, no T1w)",
    EXIT_SOFTWARE: "internal error (a bug: please report it with the output of -vv)",
    EXIT_CANT_CREATE: "the output folder cannot be written",
}


class FmrilmError(Exception):
    """Base of the errors reported to the user as one line, with an exit code."""

    exit_code = EXIT_SOFTWARE


class InputDataError(FmrilmError):
    """Input data that exist but are not usable (``BOLD not 4-D``, corrupt NIfTI, ...)."""

    exit_code = EXIT_DATA


class MissingInputError(FmrilmError):
    """Input that does not exist or that a selection did not match."""

    exit_code = EXIT_NO_INPUT


class OutputError(FmrilmError):
    """An output location that cannot be written."""

    exit_code = EXIT_CANT_CREATE


class RunFailedError(FmrilmError):
    """The workflow ran and at least one step failed (details in the crash files)."""

    exit_code = EXIT_RUN_FAILED


class OutputCheckError(FmrilmError):
    """The outputs fail fmrilm-bids' own checks (a bug: the files are listed in the log)."""

    exit_code = EXIT_SOFTWARE


class WorkDirBusyError(FmrilmError):
    """Another live run (or a worker it left) works on the same participants and work dir."""

    exit_code = EXIT_TEMP_FAIL
