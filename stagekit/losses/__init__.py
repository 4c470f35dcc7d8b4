"""Loss functions; count likelihoods wrap scvi-tools distributions."""
