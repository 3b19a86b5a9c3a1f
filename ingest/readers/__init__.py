"""Reading a log by its shape: the general reader for files no specific reader
claims, the one vocabulary that maps every reader's names to meanings, and
``ingest --explain``. The specific readers (``hf_state``, ``console``, ...)
stay where they know more than a shape can tell."""
