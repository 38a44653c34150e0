"""The package version, defined once (setup.py reads this file)."""
__version__ = "0.2.0"
