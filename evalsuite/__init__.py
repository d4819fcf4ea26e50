"""evalsuite: evaluation, compare and CI gates (issue #5; not implemented yet)."""
