"""AnnData loading and validation, data fingerprints and bulk mini-batching from CSR matrices."""
