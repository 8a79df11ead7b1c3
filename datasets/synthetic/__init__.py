"""A procedural "affordance world" written to disk exactly like AGD20K, for offline training and tests.

Why it is learnable, and honest about it:
- every object is made of 2-4 *parts*; a part's look (colour + texture) depends only on its part TYPE, and the
  types are shared across object categories (a handle looks like a handle on a knife, a hammer, a cup);
- each affordance happens on exactly one part type (``AFFORDANCE_PART``), and many objects carry two
  affordances on different parts (knife: hold -> handle, cut_with -> blade), so the object alone never tells
  the part: a model has to find *which part* goes with the action;
- exocentric images show a human proxy (a skin-coloured arm ending in a hand, the same for all affordances)
  touching the part where the person holds the object, and for tool use a target (food, a ball, liquid)
  touching the functional part; egocentric images show the object alone, so the part has to be transferred;
- the Unseen split holds out object categories whose parts reuse seen part types.

Determinism: every image comes from its own ``numpy`` generator seeded with (seed, kind, affordance, object,
index), so the same seed gives byte-identical files whatever the number of worker processes.

Modules: ``world`` (part types, objects, splits), ``draw`` (drawing primitives), ``render`` (one sample),
``files`` (what goes where), ``folder`` (what a folder holds: ours, damaged, foreign), ``describe`` (README.txt,
contact sheet), ``generate`` (``generate_world``, ``ensure_world``), ``cli`` (``python -m datasets.synthetic``).
"""

from datasets.synthetic.cli import main
from datasets.synthetic.files import MANIFEST_NAME, MARKER_NAME, PARTIAL_NAME
from datasets.synthetic.folder import DamagedWorldError, ForeignFilesError, WorldFolderError
from datasets.synthetic.generate import ensure_world, generate_world
from datasets.synthetic.render import render_ego, render_exo
from datasets.synthetic.world import (
    AFFORDANCE_PART,
    HELD_OUT_OBJECTS,
    OBJECT_SPECS,
    PART_TYPES,
    TOOL_TARGETS,
    WorldLayout,
    world_layout,
)

__all__ = [
    "AFFORDANCE_PART",
    "HELD_OUT_OBJECTS",
    "MANIFEST_NAME",
    "MARKER_NAME",
    "OBJECT_SPECS",
    "PARTIAL_NAME",
    "PART_TYPES",
    "TOOL_TARGETS",
    "DamagedWorldError",
    "ForeignFilesError",
    "WorldFolderError",
    "WorldLayout",
    "ensure_world",
    "generate_world",
    "main",
    "render_ego",
    "render_exo",
    "world_layout",
]
