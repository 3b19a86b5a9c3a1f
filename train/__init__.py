"""The bundled trainer, the TunescopeCallback, the event writer and fault injection.

Importing this package does not import torch; ``EventWriter`` works without it.
"""
