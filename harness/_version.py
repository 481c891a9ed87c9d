"""The version, where every layer may read it (the package root imports the lab)."""

__version__ = "0.1.0"
