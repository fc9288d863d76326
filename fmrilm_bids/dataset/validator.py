"""The official BIDS validator (``bids-validator-deno``), run offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ValidationReport:
    """What the validator said: its exit code and its error issues."""

    returncode: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.errors

    def describe_errors(self, limit: int = 5) -> str:
        """One line per error (code and location), at most ``limit``."""
        lines = [
            " ".join(str(e[k]) for k in ("code", "subCode", "location") if e.get(k))
            for e in self.errors[:limit]
        ]
        if len(self.errors) > limit:
            lines.append(f"... and {len(self.errors) - limit} more")
        return "; ".join(lines)


def validator_executable() -> str:
    """Path of ``bids-validator-deno`` (beside the running Python first, then on PATH)."""
    beside = Path(sys.executable).with_name("bids-validator-deno")
    if beside.is_file():
        return str(beside)
    found = shutil.which("bids-validator-deno")
    if not found:
        raise FileNotFoundError(
            "bids-validator-deno is not installed: pip install bids-validator-deno, or run "
            "with --skip-bids-validation."
        )
    return found


def validate_dataset(path: Path, *extra_args: str) -> ValidationReport:
    """Run the validator on ``path`` (a raw dataset or a derivatives folder).

    The deno cache goes to ``$DENO_DIR`` (see :mod:`fmrilm_bids.utils.environment`).
    """
    cmd = [validator_executable(), "--format", "json", *extra_args, str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ),
                          check=False)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as err:
        raise RuntimeError(
            f"bids-validator-deno gave no report for {path} (exit {proc.returncode}): "
            f"{proc.stderr.strip()[-500:]}"
        ) from err
    issues = report.get("issues", {}).get("issues", [])
    for summary in report.get("derivativesSummary", {}).values():
        issues += summary.get("issues", {}).get("issues", [])
    return ValidationReport(
        returncode=proc.returncode,
        errors=[i for i in issues if i.get("severity") == "error"],
        warnings=[i for i in issues if i.get("severity") == "warning"],
    )
