"""Two-stage semi-supervised cell annotation (Mean Teacher): pretrain at few labels -> finetune at more."""
