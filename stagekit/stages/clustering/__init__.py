"""Phenotype clustering: VAE pretrain -> cluster-search -> DEC finetune."""
