"""tunescope: find out why a fine-tuning run went wrong."""

# The one place the version is written: pyproject.toml reads it from here
# (``dynamic = ["version"]``) and ``tunescope --version`` prints it.
__version__ = "0.1.0"
