"""Configuration: dataclass schemas, Hydra composition and validation."""

from unrealnas.config.compose import compose_config, validate_config
from unrealnas.config.schema import Config, DataConfig, FractalConfig, SearchConfig

__all__ = ["Config", "DataConfig", "FractalConfig", "SearchConfig", "compose_config", "validate_config"]
