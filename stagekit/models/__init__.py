"""Pure torch modules: no I/O, no CLI, no config."""
