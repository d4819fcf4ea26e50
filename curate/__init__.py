"""curate: turn messy instruction/chat/completion data into a clean, audited training set."""

__version__ = "0.1.0"
