"""A Boutiques descriptor of ``fmrilm-bids``, generated from its argument parser.

Boutiques (https://boutiques.github.io) is how BIDS-Apps describe their command line to
platforms (CBRAIN, VIP, ``bosh exec``) so that they run without hand-written wrappers. The
descriptor is built from :func:`bids_app.parser.build_parser` itself, so it cannot drift
from the flags: every option becomes one input (its ``id`` is the option's destination),
with its type, list-ness, choices, bounds and help text; the positional arguments follow the
BIDS-App template (``mkdir -p [OUTPUT_DIR]; fmrilm-bids [BIDS_DIR] [OUTPUT_DIR]
[ANALYSIS_LEVEL] [PARTICIPANT_LABEL] [SESSION_LABEL] ...``, which ``bosh validate --bids``
checks); the exit codes come from :data:`fmrilm_bids.errors.EXIT_MEANINGS`.

Write it for the installed version with ``python -m bids_app.boutiques FILE`` (standard
output without ``FILE``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from bids_app.parser import build_parser
from fmrilm_bids import __version__
from fmrilm_bids.dataset.derivatives import CODE_URL, DOCKER_IMAGE
from fmrilm_bids.errors import EXIT_MEANINGS
from fmrilm_bids.utils.files import atomic_write_text

SCHEMA_VERSION = "0.5"
#: Path options that name a location the run creates or fills, not an existing input.
CREATED_LOCATIONS = ("work_dir", "cache_dir", "bids_database_dir")
#: The BIDS-App inputs that come first, in this order, right after the positionals.
BIDS_APP_OPTIONS = ("participant_label", "session_label")
_OUTPUT_HELP = ("The derivatives folder to write (participant level), or the one holding the "
                "participant level's outputs (group level).")


def _name(action: argparse.Action) -> str:
    return action.dest.replace("_", " ").capitalize()


def _help(action: argparse.Action) -> str:
    return (action.help or _name(action)).replace("%%", "%")


def _value_input(action: argparse.Action) -> dict[str, Any]:
    """Type, list-ness, choices and bounds of an option that takes a value."""
    entry: dict[str, Any] = {"type": "String"}
    kind = action.type
    if kind in (int, float) or getattr(kind, "__name__", "") == "_positive_int":
        entry["type"] = "Number"
        entry["integer"] = kind is not float
        if getattr(kind, "__name__", "") == "_positive_int":
            entry["minimum"] = 1
    elif kind is Path and action.dest not in CREATED_LOCATIONS:
        entry["type"] = "File"
    if action.choices:
        entry["value-choices"] = list(action.choices)
    if action.nargs in ("+", "*"):
        entry["list"] = True
        if action.nargs == "+":
            entry["min-list-entries"] = 1
    elif isinstance(action.nargs, int) and action.nargs > 1:
        entry |= {"list": True, "min-list-entries": action.nargs,
                  "max-list-entries": action.nargs}
    return entry


def _option_input(action: argparse.Action) -> dict[str, Any]:
    """The Boutiques input of one optional argument."""
    flag = next(o for o in action.option_strings if o.startswith("--"))
    entry: dict[str, Any] = {"id": action.dest, "name": _name(action), "description":
                             _help(action), "value-key": f"[{action.dest.upper()}]",
                             "optional": True}
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        entry |= {"type": "Flag", "command-line-flag": flag}
    elif isinstance(action, argparse._CountAction):  # -v / -vv: the flags are the values
        short = next(o for o in action.option_strings if not o.startswith("--"))
        entry |= {"type": "String", "value-choices": [short, short + short[1:]]}
    else:
        entry |= {"command-line-flag": flag, **_value_input(action)}
    return entry


def _positional_inputs(actions: dict[str, argparse.Action]) -> list[dict[str, Any]]:
    level = actions["analysis_level"]
    return [
        {"id": "bids_dir", "name": "BIDS directory", "type": "File",
         "description": _help(actions["bids_dir"]), "value-key": "[BIDS_DIR]",
         "optional": False},
        {"id": "output_dir_name", "name": "Output directory name", "type": "String",
         "description": _OUTPUT_HELP, "value-key": "[OUTPUT_DIR]", "optional": True},
        {"id": "participant_level_analysis_dir", "name": "Participant-level outputs",
         "type": "File", "description": _OUTPUT_HELP, "value-key": "[OUTPUT_DIR]",
         "optional": True},
        {"id": "analysis_level", "name": "Analysis level", "type": "String",
         "description": _help(level), "value-key": "[ANALYSIS_LEVEL]", "optional": False,
         "value-choices": list(level.choices)},
    ]


def _group_id(title: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", title).strip("_").lower()


def boutiques_descriptor(parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """The Boutiques descriptor (schema 0.5) of ``parser`` (default: ``fmrilm-bids``'s).

    Returns
    -------
    dict
        JSON-ready; ``bosh validate --bids`` accepts it.
    """
    parser = parser or build_parser()
    actions = {a.dest: a for a in parser._actions
               if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))}
    options = [a for a in actions.values() if a.option_strings]
    options.sort(key=lambda a: (a.dest not in BIDS_APP_OPTIONS,
                                BIDS_APP_OPTIONS.index(a.dest) if a.dest in BIDS_APP_OPTIONS
                                else 0))
    inputs = _positional_inputs(actions) + [_option_input(a) for a in options]
    groups = [{"id": "output_directory", "name": "Output directory",
               "description": "A name for the derivatives folder (participant level), or the "
               "folder of the participant level's outputs (group level).",
               "members": ["output_dir_name", "participant_level_analysis_dir"],
               "mutually-exclusive": True, "one-is-required": True}]
    for group in parser._action_groups:
        members = [a.dest for a in group._group_actions if a in options]
        if members and group.title not in ("positional arguments", "options"):
            groups.append({"id": _group_id(group.title), "name": group.title,
                           "members": members})
    command = ("mkdir -p [OUTPUT_DIR]; fmrilm-bids [BIDS_DIR] [OUTPUT_DIR] [ANALYSIS_LEVEL] "
               + " ".join(entry["value-key"] for entry in inputs[4:]))
    return {
        "name": "fmrilm-bids",
        "tool-version": __version__,
        "description": parser.description,
        "url": CODE_URL,
        "command-line": command,
        "schema-version": SCHEMA_VERSION,
        "container-image": {"type": "docker", "image": f"{DOCKER_IMAGE}:{__version__}"},
        "inputs": inputs,
        "groups": groups,
        "output-files": [{"id": "output_dir", "name": "Output directory",
                          "description": "The BIDS derivatives tree (see the README).",
                          "path-template": "[OUTPUT_DIR]", "optional": False}],
        "error-codes": [{"code": code, "description": meaning}
                        for code, meaning in sorted(EXIT_MEANINGS.items())],
        "tags": {"domain": ["neuroinformatics", "fmri", "bids-app", "language-models"]},
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m bids_app.boutiques [FILE]``: write the descriptor (stdout without FILE)."""
    cli = argparse.ArgumentParser(prog="python -m bids_app.boutiques",
                                  description=__doc__.splitlines()[0])
    cli.add_argument("out_file", nargs="?", type=Path, help="where to write the JSON")
    opts = cli.parse_args(argv)
    text = json.dumps(boutiques_descriptor(), indent=2) + "\n"
    if opts.out_file:
        atomic_write_text(opts.out_file, text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
