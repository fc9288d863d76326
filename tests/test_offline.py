"""Runs with no network, a read-only HOME, and leaves nothing in the temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_GUARDED_RUN = """
import sys
def no_network(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
        raise RuntimeError(f"network use: {event} {args}")
sys.addaudithook(no_network)
from bids_app.run import main
sys.exit(main(sys.argv[1:]))
"""


def test_offline_read_only_home_and_clean_tmp(tmp_path: Path, read_only_dir: Path) -> None:
    """The whole participant level (registration included) on one small simulated run."""
    from fmrilm_bids.simulate import simulate_dataset

    bids = simulate_dataset(tmp_path / "bids", n_subjects=1, runs=("rest",), n_volumes=40,
                            seed=5)
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("FMRILM_CACHE_DIR", "XDG_CACHE_HOME", "TEMPLATEFLOW_HOME",
                        "MPLCONFIGDIR", "DENO_DIR", "HF_HOME", "FMRILM_MODELS_DIR")}
    env.update(HOME=str(read_only_dir), TMPDIR=str(system_tmp))
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "-c", _GUARDED_RUN, str(bids), str(tmp_path / "out"),
         "participant", "-w", str(work), "--sloppy"],
        env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (work / "cache" / "templateflow").is_dir(), "caches fall back to WORK_DIR/cache"
    assert list((tmp_path / "out").glob("sub-01/func/*_desc-denoised_timeseries.tsv"))
    assert list(system_tmp.iterdir()) == []
    assert list(read_only_dir.iterdir()) == []
