"""The command line of the synthetic world: ``python -m datasets.synthetic --out DIR --seed N``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from datasets.synthetic.folder import WorldFolderError
from datasets.synthetic.generate import ensure_world


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m datasets.synthetic --out DIR --seed N``: write a synthetic AGD20K-like world."""
    parser = argparse.ArgumentParser(
        prog="python -m datasets.synthetic", description="Write a synthetic affordance world in the AGD20K layout."
    )
    parser.add_argument("--out", required=True, help="world root to write (e.g. data/synthetic)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    parser.add_argument("--image-size", type=int, default=128, help="image side in pixels (usual: 128)")
    parser.add_argument("--exo", type=int, default=24, help="exocentric train images per <aff>/<obj> folder")
    parser.add_argument("--ego", type=int, default=8, help="egocentric train images per folder")
    parser.add_argument("--test", type=int, default=6, help="egocentric test images (with GT) per folder")
    parser.add_argument("--workers", type=int, default=0, help="render processes (0: in this process)")
    parser.add_argument(
        "--regenerate",
        action="store_true",
        help="write the world again even if a complete or damaged one with these parameters is there (files that "
        "the generator did not write are never touched)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kwargs = dict(
        seed=args.seed,
        image_size=args.image_size,
        exo_per_folder=args.exo,
        ego_per_folder=args.ego,
        test_per_folder=args.test,
        workers=args.workers,
    )
    try:
        root = ensure_world(args.out, regenerate=args.regenerate, **kwargs)
    except (WorldFolderError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"synthetic world ready at {root} (contact sheet: {root / 'contact_sheet.png'})")
    return 0
