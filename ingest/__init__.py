"""Discovering runs, reading every log format, and the store (Parquet segments + DuckDB)."""
