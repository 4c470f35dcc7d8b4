"""One folder per pipeline (clustering/, cross_species/), each phase a module: bundle/data in -> model + engine ->
bundle out. `phase` holds what every training phase does around the engine, `registry` maps (stage, model) to the
code that runs, extracts and evaluates it; `extract` and `evaluate` serve every pipeline."""
