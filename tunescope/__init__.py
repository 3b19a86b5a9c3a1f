"""tunescope: find out why a fine-tuning run went wrong."""

__version__ = "0.1.0"
