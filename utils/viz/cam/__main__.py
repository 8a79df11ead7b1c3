"""python -m utils.viz.cam: see utils/viz/cam/cli.py."""

from utils.viz.cam.cli import main

raise SystemExit(main())
