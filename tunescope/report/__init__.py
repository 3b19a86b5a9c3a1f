"""What ``analyze``, ``compare`` and ``report`` write: text, JSON, GitHub, JUnit, Markdown and HTML, with the curves they draw."""
