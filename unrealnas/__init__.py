"""UnrealNAS: neural architecture search on unreal data, as an HPC batch suite."""

__version__ = "0.1.0"
