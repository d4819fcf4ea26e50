"""Sentence embeddings of many texts, as fast as the device allows.

``SentenceTransformer.encode`` tokenizes each batch in Python and pads it, one batch at a time. On a GPU
MiniLM's forward pass is so cheap that tokenization becomes the bottleneck (measured on an H100: the
GPU does 120,000 texts/s, the tokenizer call 28,000). So here:

- texts are tokenized with the Rust tokenizer's ``encode_batch_fast`` (no offsets; parallel, outside
  the GIL) on a background thread, one chunk ahead of the GPU;
- a chunk is sorted by token length and cut into batches of about ``token_budget`` tokens (padded
  tokens included), so short texts go in large batches and long ones in small, with little padding;
- the forward pass runs in fp16 on CUDA (the model is loaded that way by :func:`curate.models.sentence_model`).

The vectors equal ``model.encode(texts, normalize_embeddings=True)``'s to float rounding (a test checks
it). Models without a fast (Rust) tokenizer fall back to ``model.encode``.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Sequence

import numpy as np

CHUNK_TEXTS = 16_384
GPU_TOKEN_BUDGET = 262_144
CPU_TOKEN_BUDGET = 2_048  # small batches on CPU: no parallelism to gain, and less padding


def encode_texts(model, texts: Sequence[str], token_budget: int | None = None) -> np.ndarray:
    """L2-normalized float32 embeddings, one row per text, in the order of ``texts``."""
    import torch

    n = len(texts)
    dim = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
    out = np.zeros((n, dim), dtype=np.float32)
    if n == 0:
        return out
    tokenizer = _rust_tokenizer(model)
    if tokenizer is None:
        vecs = model.encode(list(texts), batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)
    device = model.device
    budget = token_budget or (GPU_TOKEN_BUDGET if device.type == "cuda" else CPU_TOKEN_BUDGET)
    pad_id = model.tokenizer.pad_token_id or 0
    # chunks of similar character lengths, so each chunk's batches are evenly filled
    order = np.argsort(-np.fromiter((len(t) for t in texts), dtype=np.int64, count=n), kind="stable")
    chunks = [order[i : i + CHUNK_TEXTS] for i in range(0, n, CHUNK_TEXTS)]

    def tokenize(idx: np.ndarray):
        # the Python side of tokenization (token lists -> one flat array) runs here too, off the GPU's thread
        encs = tokenizer.encode_batch_fast([texts[i] for i in idx])
        lengths = np.fromiter((len(e) for e in encs), dtype=np.int64, count=len(encs))
        flat = np.fromiter(itertools.chain.from_iterable(e.ids for e in encs), dtype=np.int64, count=int(lengths.sum()))
        return idx, lengths, flat

    # vectors stay on the device until the end: no host sync between batches
    result = torch.empty((n, dim), dtype=torch.float32, device=device)
    with torch.inference_mode():
        for idx, lengths, flat in _ahead(tokenize, chunks):
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            by_len = np.argsort(-lengths, kind="stable")
            start = 0
            while start < by_len.size:
                width = max(int(lengths[by_len[start]]), 1)
                take = by_len[start : start + max(1, budget // width)]
                start += take.size
                lens = lengths[take]
                mask = np.arange(width)[None, :] < lens[:, None]
                batch = np.full((take.size, width), pad_id, dtype=np.int64)
                # row r holds flat[starts[take[r]] : + lens[r]]: gather them with one index array
                batch[mask] = flat[(starts[take][:, None] + np.arange(width)[None, :])[mask]]
                input_ids = torch.from_numpy(batch)
                attention = torch.from_numpy(mask.astype(np.int64))
                if device.type == "cuda":
                    input_ids = input_ids.pin_memory().to(device, non_blocking=True)
                    attention = attention.pin_memory().to(device, non_blocking=True)
                emb = model({"input_ids": input_ids, "attention_mask": attention})["sentence_embedding"]
                rows = torch.from_numpy(idx[take]).to(device, non_blocking=True)
                result[rows] = torch.nn.functional.normalize(emb.float(), dim=-1)
    out[:] = result.cpu().numpy()
    return out


def _rust_tokenizer(model):
    """An independent copy of the model's Rust tokenizer, truncating like the model, or None."""
    backend = getattr(getattr(model, "tokenizer", None), "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(backend.to_str())  # a copy: the model's own tokenizer keeps its settings
    tok.no_padding()
    tok.enable_truncation(int(model.max_seq_length or 512))
    return tok


def _ahead(fn, items):
    """``fn(item)`` for each item, computed on a thread one item ahead of the consumer."""
    q: queue.Queue = queue.Queue(maxsize=1)
    stop = object()

    def work() -> None:
        try:
            for item in items:
                q.put(fn(item))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            q.put(exc)
        q.put(stop)

    threading.Thread(target=work, name="tokenize", daemon=True).start()
    while (got := q.get()) is not stop:
        if isinstance(got, BaseException):
            raise got
        yield got
