"""Perturbation transfer: the STATE-style transition model (`pretrain --preset transition`), its predictions and
their evaluation against baselines."""
