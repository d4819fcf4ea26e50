"""Silence third-party messages a user cannot act on, each one narrowly and with the reason it is harmless.

Every CLI calls :func:`quiet_third_party` once at start. Nothing here hides our own warnings or a library's
warning about the user's data or settings: only the exact messages listed, from the libraries named.
"""

from __future__ import annotations

import logging
import warnings

# Deprecation notices that transformers 5 raises when peft and TRL (not our code) call the pre-rename
# checkpointing API; they go away when those libraries switch to the new names, and nothing a user changes helps.
_TRANSFORMERS_RENAMES = (
    r"`gradient_checkpointing_enable` is deprecated",
    r"`is_gradient_checkpointing` is deprecated",
    r"`gradient_checkpointing` is deprecated",
)

# Ray Data (2.60) warns about its own renamed settings each time it copies its DataContext, i.e. for every dataset
# `engine: ray` runs; neither our code nor a user's config sets them.
_RAY_DATA_RENAMES = (
    r"`use_push_based_shuffle` is deprecated",
    r"`use_polars` is deprecated",
    r"`use_arrow_tensor_v2` is deprecated",
)


class _DropKernelHubFallback(logging.Filter):
    """Drops bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" record.

    On a CPU with AVX512-BF16, importing bitsandbytes asks the Hugging Face kernel hub for a faster 4-bit
    inference kernel; we never fetch code from a hub at run time, so the lookup fails and bitsandbytes uses
    its own CPU kernel, which gives the same results. The message says nothing a user needs to fix."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for that one message; every other record passes."""
        return "from kernels-community" not in record.getMessage()


def quiet_third_party() -> None:
    """Install the filters above (idempotent: a second call adds nothing)."""
    for message in _TRANSFORMERS_RENAMES:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    for message in _RAY_DATA_RENAMES:
        warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _DropKernelHubFallback) for f in logger.filters):
        logger.addFilter(_DropKernelHubFallback())
