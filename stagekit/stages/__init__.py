"""One module per phase: bundle/data in -> model + engine -> bundle out."""
