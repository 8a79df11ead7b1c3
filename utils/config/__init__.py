"""The typed configuration of a run: a dataclass schema with defaults, YAML files that hold differences, and
``section.key=value`` overrides; the resolved configuration is written into the run folder and every checkpoint."""

from utils.config.loading import (
    config_from_dict,
    config_help,
    config_to_dict,
    load_config,
    parse_override,
    save_config,
)
from utils.config.schema import (
    BASELINES,
    SPLITS,
    BackboneConfig,
    BitAlignConfig,
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    ExtensionsConfig,
    LossConfig,
    ModelConfig,
    OutputConfig,
    SyntheticConfig,
    TextConfig,
    TrainConfig,
    VizConfig,
)
from utils.config.validation import validate

__all__ = [
    "BASELINES",
    "SPLITS",
    "BackboneConfig",
    "BitAlignConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExtensionsConfig",
    "LossConfig",
    "ModelConfig",
    "OutputConfig",
    "SyntheticConfig",
    "TextConfig",
    "TrainConfig",
    "VizConfig",
    "config_from_dict",
    "config_help",
    "config_to_dict",
    "load_config",
    "parse_override",
    "save_config",
    "validate",
]
