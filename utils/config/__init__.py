"""The typed configuration of a run: schema, YAML files that hold differences, command-line overrides."""

from utils.config.schema import *  # noqa: F403
from utils.config.schema import __all__  # noqa: F401
