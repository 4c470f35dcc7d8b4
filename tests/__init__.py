"""stagekit's tests (a regular package: a dependency installs a top-level `tests` package of its own)."""
