"""train: QLoRA training over curate's output (issue #4; not implemented yet)."""
