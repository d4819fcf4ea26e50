"""Preference objectives on the same adapters: DPO and KTO through TRL, with the workbench's own template masks.

``method.objective: dpo`` trains on preference pairs (a prompt, a chosen and a rejected completion), ``kto`` on
records whose completion is labeled desirable or not (and on pairs, read as one desirable and one undesirable
completion). Records are read by curate's readers, so every preference layout curate knows works here
(LLaMA-Factory, TRL, HH-RLHF, OpenAssistant ranks, curate's own exports).

Each side is rendered through the tokenizer's chat template (tools included, see :mod:`chat.tools`) and masked
by :class:`chat.template.ChatEncoder`, the same code that masks supervised fine-tuning: only the completion's
answers are scored (the prompt's earlier answers are context), each through its end-of-turn token. TRL's
trainers get the token ids and masks ready (their own tokenization is skipped), so the mask audit written
before training shows exactly what the loss scores, for the chosen and the rejected side. The reference model is
the base with the adapter switched off, as TRL does for a peft model.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections import Counter
from typing import Any

from chat.template import IGNORE_INDEX, ChatEncoder, TemplateMismatch, marked_text

PAIRED_OBJECTIVES = ("dpo", "orpo")  # objectives that train on a chosen and a rejected completion of one prompt


def _sides(record: Any, objective: str) -> list[tuple[list[dict], list[dict] | None, bool | None]] | str:
    """What a converted record gives an objective: ``[(chosen or completion conversation, rejected conversation or
    None, label or None)]``, or the reason it gives nothing."""
    from chat.conversations import message_dicts, rejected_dicts

    kind = record.extra.kind if record.extra is not None else "sft"
    if objective in PAIRED_OBJECTIVES:
        if kind != "preference":
            return f"a {kind} record: {objective} trains on preference pairs (a prompt, a chosen and a rejected completion)"
        return [(message_dicts(record), rejected_dicts(record), None)]
    if kind == "kto":
        return [(message_dicts(record), None, bool(record.extra.label))]
    if kind == "preference":  # a pair is two unpaired examples: the chosen side desirable, the rejected one not
        return [(message_dicts(record), None, True), (rejected_dicts(record), None, False)]
    return f"a {kind} record: kto trains on labeled completions (or preference pairs)"


def _tools(record: Any) -> list | None:
    tools = record.extra.tools if record.extra is not None else None
    return json.loads(tools) if tools else None


def encode_side(encoder: ChatEncoder, messages: list[dict], prompt_turns: int, tools: list | None):
    """One side through the template (tool calls in the template's own form, :mod:`chat.tools`): the
    :class:`chat.template.Encoded` whose labels score the completion's answers only."""
    from chat.tools import template_messages

    rendered, passed = template_messages(encoder.tokenizer, messages, tools)
    prompt, _ = template_messages(encoder.tokenizer, messages[:prompt_turns], tools)
    return encoder.encode(rendered, passed, train_from=len(prompt))


class _Collected:
    """What the encoding loop gathers before it becomes a :class:`train.data.PreparedData`."""

    def __init__(self) -> None:
        self.rejected: list[dict[str, Any]] = []
        self.audit: list[str] = []
        self.digest = hashlib.sha256()
        self.sources: dict[str, list[int]] = {}


def prepare_preference_data(cfg: Any, tokenizer: Any) -> Any:
    """Read every data source and the validation file with curate's readers, mix the sources by weight (seeded)
    and encode each record for ``cfg.method.objective``: DPO and ORPO rows ``{prompt_ids: [], chosen_ids, chosen_mask,
    rejected_ids, rejected_mask}`` (each side a whole conversation, its mask the completion's trained tokens),
    KTO rows ``{prompt_ids, completion_ids, KL_completion_ids, label}``. Records the objective cannot use, and
    sides with no trainable token (an empty completion, cut to nothing), are rejected with a reason. Returns a
    :class:`train.data.PreparedData` (no sample prompts)."""
    from chat.conversations import read_records
    from train.data import PreparedData, file_hashes, mix

    objective = cfg.method.objective
    encoder = ChatEncoder(tokenizer, cfg.max_seq_len, False, cfg.truncation)
    out = _Collected()
    tally: Counter[str] = Counter()
    per_source = []
    origin: dict[str, str] = {}
    for i, source in enumerate(cfg.data):
        label = f"data[{i}] ({source.path})"
        records, bad = read_records(cfg.resolve(source.path), source.shape, source.mapping, source.limit)
        out.rejected += [{**b, "stage": "read", "source": label} for b in bad]
        origin.update((where, label) for where, _r in records)
        per_source.append((source, records))
    mixed, counts = mix(per_source, cfg.seed)

    def encode(items: list, split: str, label: str | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for where, record in items:
            source = label or origin[where]
            seen = out.sources.setdefault(source, [0, 0])
            seen[0] += 1
            sides = _sides(record, objective)
            if isinstance(sides, str):
                out.rejected.append({"where": where, "stage": "objective", "reason": sides, "split": split, "source": source})
                continue
            k, tools = record.extra.prompt_turns, _tools(record)
            for chosen, rejected, desirable in sides:
                try:
                    encoded = [encode_side(encoder, m, k, tools) for m in ([chosen, rejected] if rejected else [chosen])]
                except TemplateMismatch as exc:
                    from train.preflight import PreflightError

                    raise PreflightError(f"{where}: {exc}") from None
                reasons = [e.reason for e in encoded if e.reason]
                if reasons:
                    side = "rejected side: " if len(encoded) == 2 and not encoded[0].reason else ""
                    out.rejected.append({"where": where, "stage": "mask_audit", "reason": side + reasons[0], "split": split, "source": source})
                    continue
                for e in encoded:
                    out.digest.update(array("q", e.input_ids + [-1] + e.labels).tobytes())
                    tally["truncated"] += e.truncated
                seen[1] += 1
                if objective in PAIRED_OBJECTIVES:
                    c, r = encoded
                    rows.append({"prompt_ids": [], "chosen_ids": c.input_ids, "chosen_mask": _mask(c.labels),
                                 "rejected_ids": r.input_ids, "rejected_mask": _mask(r.labels)})
                    if split == "train" and len(out.audit) < 3:
                        out.audit.append(f"# {where}: chosen {c.n_trainable} of {len(c.input_ids)} tokens scored, rejected "
                                         f"{r.n_trainable} of {len(r.input_ids)}\n--- chosen ---\n{marked_text(tokenizer, c)}\n"
                                         f"--- rejected ---\n{marked_text(tokenizer, r)}")
                else:
                    (e,) = encoded
                    trained = [i for i, x in enumerate(e.labels) if x != IGNORE_INDEX]
                    first, last = trained[0], trained[-1] + 1
                    if any(x == IGNORE_INDEX for x in e.labels[first:last]):
                        tally["kto_untrained_inside_completion"] += 1  # a tool result inside the completion is scored
                    rows.append({"prompt_ids": e.input_ids[:first], "completion_ids": e.input_ids[first:last], "label": desirable})
                    if split == "train" and len(out.audit) < 3:
                        out.audit.append(f"# {where}: {'desirable' if desirable else 'undesirable'}, {last - first} of "
                                         f"{len(e.input_ids)} tokens scored\n{marked_text(tokenizer, e)}")
        if objective == "kto" and rows:  # KTO's KL term pairs each prompt with another example's completion
            for i, row in enumerate(rows):
                row["KL_completion_ids"] = rows[i - 1]["completion_ids"]
        return rows

    train = encode(mixed, "train")
    validation: list[dict[str, Any]] = []
    if cfg.validation:
        label = f"validation ({cfg.validation})"
        records, bad = read_records(cfg.resolve(cfg.validation))
        out.rejected += [{**b, "stage": "read", "split": "validation", "source": label} for b in bad]
        out.sources.setdefault(label, [0, 0])
        validation = encode(records, "validation", label)
    if objective in PAIRED_OBJECTIVES:
        tokens = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in train)
        scored = sum(sum(r["chosen_mask"]) + sum(r["rejected_mask"]) for r in train)
    else:
        tokens = sum(len(r["prompt_ids"]) + len(r["completion_ids"]) for r in train)
        scored = sum(len(r["completion_ids"]) for r in train)
    stats: dict[str, Any] = {
        "objective": objective, "train_examples": len(train), "validation_examples": len(validation),
        "rejected": len(out.rejected), "truncated": tally["truncated"], "truncation": cfg.truncation,
        "train_tokens": tokens, "trainable_tokens": scored, "trainable_share": round(scored / tokens, 4) if tokens else 0.0,
        "mix": counts,
    }
    if objective == "kto":
        stats["desirable"] = sum(1 for r in train if r["label"])
        stats["undesirable"] = len(train) - stats["desirable"]
        stats["kto_untrained_inside_completion"] = tally["kto_untrained_inside_completion"]
    files, combined = file_hashes(cfg)
    return PreparedData(train, validation, out.rejected, stats, out.digest.hexdigest(), [], out.audit, files, combined,
                        {k: (v[0], v[1]) for k, v in out.sources.items()})


def preference_summary(stats: dict[str, Any]) -> str:
    """The pre-flight's one line on a preference objective's data: examples, scored share, rejected records."""
    parts = [f"{stats['objective']}: {stats['train_examples']} training examples"]
    if stats["objective"] == "kto":
        parts.append(f"{stats['desirable']} desirable, {stats['undesirable']} undesirable")
    parts.append(f"{stats['trainable_share']:.0%} of their tokens scored")
    parts.append(f"{stats['rejected']} records rejected")
    if stats["truncated"]:
        parts.append(f"{stats['truncated']} sides cut to fit max_seq_len (truncation: {stats['truncation']})")
    return "mask audit: " + "; ".join(parts)


def _mask(labels: list[int]) -> list[int]:
    return [int(x != IGNORE_INDEX) for x in labels]


def preference_collator(pad_token_id: int) -> Any:
    """TRL's preference collator with the workbench's masks: each side's ``*_mask`` says which tokens are scored
    (TRL's own marks every completion token, tool results inside a completion included)."""
    import torch
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    class MaskedPreferenceCollator(DataCollatorForPreference):
        """Chosen rows, then rejected rows, right-padded; ``completion_mask`` from the examples' masks."""

        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            out = super().torch_call(examples)
            masks = [e["chosen_mask"] for e in examples] + [e["rejected_mask"] for e in examples]
            completion = torch.zeros_like(out["completion_mask"])
            for row, m in enumerate(masks):
                completion[row, : len(m)] = torch.tensor(m, dtype=completion.dtype)
            out["completion_mask"] = completion
            return out

    return MaskedPreferenceCollator(pad_token_id=pad_token_id)


def _dpo_losses(sft_weight: float) -> dict[str, Any]:
    """TRL's loss list for DPO with ``sft_weight``: the sigmoid (DPO) loss alone, or with TRL's ``sft`` loss (the
    chosen side's mean token NLL over the trained tokens, our masks) weighted by ``sft_weight`` (RPO)."""
    if not sft_weight:
        return {"loss_type": ["sigmoid"]}
    return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, sft_weight]}


def build_trainer(cfg: Any, model: Any, tokenizer: Any, data: Any, common: dict[str, Any], lora: Any,
                  callbacks: list) -> Any:
    """The TRL trainer of ``cfg.method.objective`` over the encoded rows: DPOTrainer or KTOTrainer with ``beta``,
    their dataset preparation skipped (the rows are tokenized and masked already), the peft adapter from
    ``lora``; ``common`` holds the TrainingArguments both share with supervised fine-tuning."""
    from datasets import Dataset

    train = Dataset.from_list(data.train)
    validation = Dataset.from_list(data.validation) if data.validation else None
    m = cfg.method
    if m.objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        class WorkbenchDPOTrainer(DPOTrainer):
            """DPOTrainer over rows the workbench tokenized and masked."""

            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # noqa: D102 - tokenized already
                return dataset

            def _set_signature_columns_if_needed(self):  # noqa: D102 - the masks are inputs of the collator
                super()._set_signature_columns_if_needed()
                self._signature_columns = [*(self._signature_columns or []), "chosen_mask", "rejected_mask"]

        return WorkbenchDPOTrainer(
            model=model, args=DPOConfig(**common, beta=m.beta, max_length=None, **_dpo_losses(m.sft_weight)), train_dataset=train, eval_dataset=validation,
            processing_class=tokenizer, data_collator=preference_collator(tokenizer.pad_token_id), peft_config=lora, callbacks=callbacks,
        )
    if m.objective == "orpo":
        from peft import get_peft_model
        from transformers import TrainingArguments

        model = get_peft_model(model, lora)
        if common.get("gradient_checkpointing"):
            model.enable_input_require_grads()  # the frozen embeddings give no grad for checkpointed blocks to pass on
        return orpo_trainer_class()(
            beta=m.beta, model=model, args=TrainingArguments(**common, remove_unused_columns=False), train_dataset=train,
            eval_dataset=validation, processing_class=tokenizer, data_collator=preference_collator(tokenizer.pad_token_id),
            callbacks=callbacks,
        )
    from trl import KTOConfig, KTOTrainer

    class WorkbenchKTOTrainer(KTOTrainer):
        """KTOTrainer over rows the workbench tokenized and masked."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # noqa: D102 - tokenized already
            return dataset

    desirable = sum(1 for r in data.train if r["label"]) or 1
    undesirable = (len(data.train) - desirable) or 1
    # KTO's paper: desirable_weight x n_desirable / (undesirable_weight x n_undesirable) should lie in [1, 4/3]
    ratio = desirable / undesirable
    weights = {"desirable_weight": 1 / ratio if ratio < 1 else 1.0, "undesirable_weight": ratio if ratio > 4 / 3 else 1.0}
    return WorkbenchKTOTrainer(
        model=model, args=KTOConfig(**common, beta=m.beta, max_length=None, **weights), train_dataset=train,
        eval_dataset=validation, processing_class=tokenizer, peft_config=lora, callbacks=callbacks,
    )


def orpo_loss(chosen_logp: Any, chosen_tokens: Any, rejected_logp: Any, rejected_tokens: Any, beta: float) -> tuple[Any, dict[str, Any]]:
    """ORPO's loss (Hong et al. 2024, eq. 6-7) from each side's summed log-probability over its trained tokens and
    their count (1-D tensors, one entry per pair): the chosen answers' mean token NLL plus ``beta`` times
    ``-log sigmoid(log odds(chosen) - log odds(rejected))``, the odds taken of each side's mean token probability
    ``p`` as ``p / (1 - p)``. Returns the loss and the terms worth logging (detached)."""
    import torch
    import torch.nn.functional as F

    mean_c = chosen_logp / chosen_tokens.clamp_min(1)
    mean_r = rejected_logp / rejected_tokens.clamp_min(1)

    def log1mexp(x: Any) -> Any:  # log(1 - exp(x)) for x < 0, kept finite where a side is certain (x = 0)
        return torch.log(-torch.expm1(x.clamp_max(-1e-6)))

    log_odds = (mean_c - mean_r) - (log1mexp(mean_c) - log1mexp(mean_r))
    ratio = F.logsigmoid(log_odds)
    nll = -chosen_logp.sum() / chosen_tokens.sum().clamp_min(1)
    loss = nll - beta * ratio.mean()
    logs = {"nll_loss": nll.detach(), "log_odds_ratio": ratio.detach().mean(), "log_odds_chosen": log_odds.detach().mean(),
            "rewards/accuracies": (mean_c > mean_r).float().detach().mean()}
    return loss, logs


def orpo_trainer_class() -> Any:
    """A ``transformers.Trainer`` whose loss is :func:`orpo_loss` over :func:`preference_collator` batches (chosen
    rows, then rejected rows; ``completion_mask`` the workbench's trained tokens): ORPO needs no reference model,
    and the supervised term scores the tokens the mask audit shows, nothing of the prompt. TRL keeps its own ORPO
    among its experimental trainers and scores the prompt in that term, hence this small loss of our own."""
    import torch
    from transformers import Trainer
    from trl.trainer.utils import selective_log_softmax

    class WorkbenchORPOTrainer(Trainer):
        """ORPO on the workbench's preference rows (see :func:`orpo_trainer_class`)."""

        def __init__(self, *args: Any, beta: float, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.beta = beta
            self._logged: dict[str, list[float]] = {}

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            ids, mask = inputs["input_ids"], inputs["completion_mask"]
            logits = model(input_ids=ids, attention_mask=inputs["attention_mask"], use_cache=False).logits[:, :-1]
            scored = mask[:, 1:].to(torch.float32)
            logp = (selective_log_softmax(logits.float(), ids[:, 1:]) * scored).sum(-1)
            tokens = scored.sum(-1)
            (chosen, rejected), (c_n, r_n) = logp.chunk(2), tokens.chunk(2)
            loss, logs = orpo_loss(chosen, c_n, rejected, r_n, self.beta)
            for key, value in logs.items():
                self._logged.setdefault(key, []).append(float(value))
            return (loss, {"logits": logits}) if return_outputs else loss

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:  # noqa: D102 - adds the loss terms' means
            logs = {**logs, **{k: sum(v) / len(v) for k, v in self._logged.items() if v}}
            self._logged = {}
            super().log(logs, *args, **kwargs)

    return WorkbenchORPOTrainer
