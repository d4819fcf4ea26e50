"""chat: what training and evaluation share, below both (neither ``train`` nor ``evalsuite`` imports the other).

- :mod:`chat.conversations`: reading conversations from any file curate reads, and loading a tokenizer;
- :mod:`chat.template`: chat records -> token ids and the loss mask, through the tokenizer's own template;
- :mod:`chat.generate`: batched, left-padded, greedy generation with the chat template;
- :mod:`chat.models`: loading a model (and an adapter) for inference.
"""
