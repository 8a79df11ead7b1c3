"""AGD20K loaders (and any dataset in its layout, such as the synthetic world), plus a dataset checker.

Layout (as AGD20K is distributed)::

    <root>/<Seen|Unseen>/trainset/exocentric/<affordance>/<object>/<name>.jpg
    <root>/<Seen|Unseen>/trainset/egocentric/<affordance>/<object>/<name>.jpg
    <root>/<Seen|Unseen>/testset/egocentric/<affordance>/<object>/<name>.jpg
    <root>/<Seen|Unseen>/testset/GT/<affordance>/<object>/<name>.png

Labels index the split's alphabetical affordance list: the published 36 (Seen) / 25 (Unseen) classes for AGD20K,
``classes.json`` in the root for other datasets, or else the folder names, sorted.

Modules: ``layout`` (class lists, folder layout, ``load_class_names``), ``trainset`` (``AGD20KTrain``), ``testset``
(``AGD20KTest``), ``checker`` (``summarize``, ``format_summary`` and the command line:
``python -m datasets.agd20k ROOT --split Seen`` prints a summary and lists every problem it finds).
"""

from datasets.agd20k.checker import format_summary, main, summarize
from datasets.agd20k.layout import (
    LAYOUT,
    OBJECTS,
    SEEN_AFFORDANCES,
    SUBSETS,
    UNSEEN_AFFORDANCES,
    load_class_names,
)
from datasets.agd20k.testset import AGD20KTest
from datasets.agd20k.trainset import AGD20KTrain
from datasets.images import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LAYOUT",
    "OBJECTS",
    "SEEN_AFFORDANCES",
    "SUBSETS",
    "UNSEEN_AFFORDANCES",
    "AGD20KTest",
    "AGD20KTrain",
    "format_summary",
    "load_class_names",
    "main",
    "summarize",
]
