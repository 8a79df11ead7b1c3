"""``python -m datasets.agd20k ROOT --split Seen``: print a summary; exit 1 if problems, 2 if no dataset."""

import sys

from datasets.agd20k.checker import main

sys.exit(main())
