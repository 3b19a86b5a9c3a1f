"""Saved console output: telling it apart, finding its step items, and the run it describes."""
