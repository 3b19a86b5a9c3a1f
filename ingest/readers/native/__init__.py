"""tunescope's own per-rank event logs: the reader and its three parsing tiers."""
