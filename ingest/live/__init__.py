"""Following runs still being written: new complete lines, changed runs, file events."""
