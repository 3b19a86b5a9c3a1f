"""Scans and statistics the detectors share: series, trend tests, incidents, windows, siblings, the tables of causes."""
