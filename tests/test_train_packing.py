"""Row packing (train/packing.py): packed rows stay rows, and each packed example computes exactly what it
computes alone, with the model's default attention (sdpa) on the embedded SmolLM2."""

from __future__ import annotations


def test_each_packed_example_computes_what_it_computes_alone():
    import torch
    from transformers import AutoModelForCausalLM

    from curate.models import smollm2_model_dir
    from train.packing import RowPackedCollator

    model = AutoModelForCausalLM.from_pretrained(str(smollm2_model_dir()), dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    examples = [torch.randint(100, 5000, (n,), generator=gen).tolist() for n in (7, 11, 5, 9, 4)]
    # two rows as TRL's best-fit-decreasing packing leaves them: [11, 7] and [9, 5, 4]; labels = ids
    rows = [examples[1] + examples[0], examples[3] + examples[2] + examples[4]]
    batch = RowPackedCollator(pad_token_id=0)(
        [{"input_ids": r, "labels": r, "seq_lengths": s} for r, s in zip(rows, [[11, 7], [9, 5, 4]])]
    )
    assert batch["input_ids"].shape == (2, 18) and "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == list(range(11)) + list(range(7))
    assert batch["position_ids"][1].tolist() == list(range(9)) + list(range(5)) + list(range(4))
    # no label crosses an example boundary: every example's first token is unlabelled
    assert (batch["labels"][batch["position_ids"] == 0] == -100).all()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        order = [(0, 0, 1), (0, 11, 0), (1, 0, 3), (1, 9, 2), (1, 14, 4)]  # (row, start, example)
        for row, start, k in order:
            alone = model(input_ids=torch.tensor([examples[k]]), use_cache=False).logits[0]
            got = packed[row, start : start + len(examples[k])]
            assert (got - alone).abs().max().item() < 1e-3, (row, start, k)


def test_row_packing_is_the_default_except_with_flash_attention():
    from train.packing import use_row_packing

    assert use_row_packing("auto", None) and use_row_packing("auto", "sdpa") and use_row_packing("rows", "flash_attention_2")
    assert not use_row_packing("auto", "flash_attention_2") and not use_row_packing("flat", None)
