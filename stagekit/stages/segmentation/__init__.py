"""Cell segmentation: a Segger-style heterogeneous GNN that links transcripts to nuclei (`segment`), its
predictions (`extract`) and their evaluation against nucleus expansion (`evaluate`)."""
