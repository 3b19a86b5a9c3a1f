"""Detectors: one module per detector, the registry, fix suggestions and report formats."""
