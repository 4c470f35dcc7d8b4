"""Cross-species integration (SATURN): macrogene pretrain -> align, the demo."""
