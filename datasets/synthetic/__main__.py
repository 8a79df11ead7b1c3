"""``python -m datasets.synthetic --out DIR --seed N``: write a synthetic AGD20K-like world."""

import sys

from datasets.synthetic.cli import main

sys.exit(main())
