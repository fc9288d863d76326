"""The Boutiques descriptor: generated from the parser, valid, and it drives the parser."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

import boutiques
import pytest
from boutiques.invocationSchemaHandler import InvocationValidationError

from bids_app.boutiques import boutiques_descriptor, main
from bids_app.parser import build_parser
from fmrilm_bids import __version__
from fmrilm_bids.errors import EXIT_MEANINGS

#: Values of the string options whose parser type checks them.
TYPED_STRINGS = {"derivatives": ["fmriprep=/data/fmriprep", "/data/other"],
                 "output_spaces": ["MNI152NLin6Asym:res-2", "MNI152NLin2009cAsym:res-1"]}
#: The positional OUTPUT_DIR is two inputs (a name to create, or the participant outputs).
OUTPUT_INPUTS = {"output_dir_name", "participant_level_analysis_dir"}


def parser_actions() -> dict[str, argparse.Action]:
    return {a.dest: a for a in build_parser()._actions
            if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))}


@pytest.fixture
def descriptor_file(tmp_path: Path) -> Path:
    path = tmp_path / "fmrilm-bids.json"
    assert main([str(path)]) == 0
    return path


def test_descriptor_is_a_valid_bids_app(descriptor_file: Path) -> None:
    boutiques.validate(str(descriptor_file), "--bids")  # raises when invalid
    descriptor = json.loads(descriptor_file.read_text())
    assert descriptor["tool-version"] == __version__
    assert descriptor["container-image"]["image"].endswith(f":{__version__}")
    assert {e["code"]: e["description"] for e in descriptor["error-codes"]} == EXIT_MEANINGS
    assert descriptor["command-line"].startswith(
        "mkdir -p [OUTPUT_DIR]; fmrilm-bids [BIDS_DIR] [OUTPUT_DIR] [ANALYSIS_LEVEL] "
        "[PARTICIPANT_LABEL] [SESSION_LABEL] ")


def test_every_parser_option_is_one_input() -> None:
    descriptor = boutiques_descriptor()
    inputs = {entry["id"]: entry for entry in descriptor["inputs"]}
    assert len(inputs) == len(descriptor["inputs"])
    assert set(inputs) - OUTPUT_INPUTS == set(parser_actions()) - {"output_dir"}
    for key in inputs:
        assert f"[{key.upper()}]" in descriptor["command-line"] or key in OUTPUT_INPUTS
    assert inputs["nprocs"] | {"description": ""} == {
        "id": "nprocs", "name": "Nprocs", "description": "", "value-key": "[NPROCS]",
        "optional": True, "command-line-flag": "--nprocs", "type": "Number", "integer": True,
        "minimum": 1}
    assert inputs["high_pass"]["integer"] is False and inputs["scrub"]["type"] == "Flag"
    assert inputs["atlases"]["list"] and inputs["atlases"]["command-line-flag"] == "--atlas"
    assert inputs["device"]["value-choices"] == ["auto", "cpu", "cuda"]
    assert inputs["config_file"]["type"] == "File" and inputs["work_dir"]["type"] == "String"
    assert "30% more time" in inputs["gradient_checkpointing"]["description"]
    grouped = {m for g in descriptor["groups"] for m in g["members"]}
    assert grouped == set(inputs) - {"bids_dir", "analysis_level"}


def _value(entry: dict[str, Any], folder: Path) -> Any:
    """An invocation value of each kind of input."""
    if entry["type"] == "Flag":
        return True
    if "value-choices" in entry:
        choice = entry["value-choices"][-1]
        return [choice] if entry.get("list") else choice
    if entry["type"] == "Number":
        one = entry.get("minimum", 3) + 1 if entry["integer"] else 0.25
        return [one, one + 1] if entry.get("list") else one
    if entry["type"] == "File":
        path = folder / entry["id"]
        path.mkdir(exist_ok=True)
        return [str(path)] if entry.get("list") else str(path)
    if entry["id"] in TYPED_STRINGS:
        return TYPED_STRINGS[entry["id"]]
    one = f"{entry['id']}_1"
    return [one, one.replace("1", "2")] if entry.get("list") else one


def _expected(action: argparse.Action, value: Any) -> Any:
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return not isinstance(action, argparse._StoreFalseAction)  # the flag was given
    if isinstance(action, argparse._CountAction):
        return len(value) - 1
    convert = action.type or (lambda v: v)
    return [convert(str(v)) for v in value] if isinstance(value, list) else convert(str(value))


def test_bosh_invocations_parse_to_the_values_given(descriptor_file: Path,
                                                    tmp_path: Path) -> None:
    descriptor = json.loads(descriptor_file.read_text())
    invocation = {entry["id"]: _value(entry, tmp_path) for entry in descriptor["inputs"]
                  if entry["id"] != "participant_level_analysis_dir"}
    invocation["output_dir_name"] = str(tmp_path / "out")
    invocation_file = tmp_path / "invocation.json"
    invocation_file.write_text(json.dumps(invocation))
    result = boutiques.execute("simulate", str(descriptor_file), "-i", str(invocation_file))
    mkdir, command = result.stdout.strip().split("; ", 1)
    assert mkdir == f"mkdir -p {tmp_path / 'out'}"
    argv = shlex.split(command)
    assert argv[0] == "fmrilm-bids"
    opts = vars(build_parser().parse_args(argv[1:]))
    actions = parser_actions()
    expected = {key: _expected(actions[key], value) for key, value in invocation.items()
                if key in actions} | {"output_dir": tmp_path / "out"}
    assert opts == expected
    assert opts["nprocs"] == 2 and opts["verbosity"] == 2 and opts["scrub"] is True


@pytest.mark.parametrize(("key", "bad"), [("nprocs", 0), ("device", "tpu"),
                                          ("analysis_level", "session")])
def test_bosh_and_the_parser_refuse_the_same_values(descriptor_file: Path, tmp_path: Path,
                                                    key: str, bad: object) -> None:
    invocation = {"bids_dir": str(tmp_path), "output_dir_name": str(tmp_path / "out"),
                  "analysis_level": "participant", key: bad}
    invocation_file = tmp_path / "invocation.json"
    invocation_file.write_text(json.dumps(invocation))
    with pytest.raises(InvocationValidationError, match="Failed validating"):
        boutiques.invocation(str(descriptor_file), "-i", str(invocation_file))
    flag = {"nprocs": ["--nprocs", "0"], "device": ["--device", "tpu"]}.get(key, [])
    level = "session" if key == "analysis_level" else "participant"
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["in", "out", level, *flag])
    assert refused.value.code == 2
