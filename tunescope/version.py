"""The one place the version is written: ``pyproject.toml`` reads it from here
(``dynamic = ["version"]``), ``tunescope --version`` prints it, and the
findings cache keys on it. A module of its own, so that any layer can read it
without importing the package's entry points."""

__version__ = "0.1.0"
