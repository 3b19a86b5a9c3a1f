"""The Textual app over a runs directory."""
