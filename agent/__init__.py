"""The device agent: verifies bundles, runs camera inference, reports back."""

__version__ = "0.1.0"
