"""Rewrite fmrilm_bids/resources/data/captions/caption_pool.tsv from its composition.

Usage: ``python scripts/make_caption_pool.py`` (deterministic; no download).
"""

from __future__ import annotations

from fmrilm_bids.resources.captions import caption_pool_path, compose_caption_pool
from fmrilm_bids.utils.files import atomic_write


def main() -> None:
    """Compose the pool and write it atomically."""
    pool = compose_caption_pool()
    path = caption_pool_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: pool.to_csv(tmp, sep="\t", index=False))
    print(f"{path}: {len(pool)} captions")


if __name__ == "__main__":
    main()
