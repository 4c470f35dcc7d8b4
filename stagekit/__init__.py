"""stagekit: staged training of single-cell and spatial-omics models from the command line."""

__version__ = "0.1.0"
