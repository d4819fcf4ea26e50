"""Collating packed rows for sdpa/eager attention without flattening the batch.

TRL packs examples best-fit-decreasing into rows of at most ``max_seq_len`` tokens (``seq_lengths`` says
where each example starts) and, padding-free, concatenates every row of a micro-batch into ONE sequence.
That is right for flash-attention's variable-length kernels, which skip the masked blocks. With sdpa,
transformers turns the restarting position ids into a dense block-diagonal mask over the whole flattened
sequence, so attention costs (rows x L)^2 and the mask alone (rows x L)^2 bytes: a 16k-token micro-batch
pays 64x the attention of 32 rows of 512.

:class:`RowPackedCollator` keeps rows as rows: ``[rows, longest row]``, position ids restarting at each
example, no attention mask, so transformers builds the block-diagonal mask per row. The padding at the end
of a shorter row is a block of its own (positions from 0, labels -100): real tokens never attend to it.
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100


class RowPackedCollator:
    """``examples`` (TRL-packed rows: ``input_ids``, ``labels``, ``seq_lengths``) -> a batch of
    ``input_ids``, ``labels`` and ``position_ids``, each ``[rows, longest row]``."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad ``examples`` into one batch: ``input_ids`` (pad token), ``labels`` (-100 on padding) and
        ``position_ids`` restarting at 0 for each packed example, so examples in a row stay apart."""
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            input_ids[i, :n] = torch.as_tensor(e["input_ids"])
            labels[i, :n] = torch.as_tensor(e["labels"])
            blocks = list(e.get("seq_lengths") or [n]) + ([width - n] if width > n else [])
            position_ids[i] = torch.cat([torch.arange(b) for b in blocks])
        # an example's first token has no previous token of its own to be predicted from
        labels[position_ids == 0] = IGNORE_INDEX
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def use_row_packing(packing: str, attn_implementation: str | None) -> bool:
    """``auto``: rows unless the attention is a varlen kernel (flash-attention's, or PyTorch's through
    :mod:`train.attention`), for which the flattened batch is the cheaper layout."""
    if packing != "auto":
        return packing == "rows"
    return not (attn_implementation or "").startswith(("flash_attention", "kernels-community/flash", "torch_varlen"))
