"""The typed `train run` config, validated before any work starts.

```yaml
name: smollm2-alpaca
base_model: embedded                  # SmolLM2-135M-Instruct from the packaged GGUF; or a local path / hub id
data:
  - path: ../out/quickstart/data/train.jsonl     # curate's export, or any file curate reads
  - path: ../general/instructions.jsonl          # mixed in against forgetting
    weight: 0.15                                  # share of the training examples drawn from this source
validation: ../out/quickstart/data/validation.jsonl
method: {kind: qlora, r: 16, alpha: 32, dropout: 0.05, target_modules: all-linear}
optim: {lr: 2.0e-4, scheduler: cosine, warmup_ratio: 0.03, grad_accum: 4, max_grad_norm: 1.0}
max_seq_len: 1024
epochs: 1
```
Relative paths are relative to the config file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from curate.config import FileConfig, check_shape, import_plugins, read_yaml, validate


class TrainConfigError(ValueError):
    """An invalid train config; the message names every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo is an error, not a silently ignored key


class DataSource(_Strict):
    path: str
    # Share of the training examples drawn from this source. Sources without a weight share what the
    # weighted ones leave, in proportion to their sizes; weights must not add up to more than 1.
    weight: float | None = Field(default=None, gt=0, le=1)
    shape: str = "auto"
    mapping: dict[str, str | list[str]] | None = None
    limit: int | None = Field(default=None, ge=1)

    @field_validator("shape")
    @classmethod
    def _known_shape(cls, value: str, info: ValidationInfo) -> str:
        return check_shape(value, info)


class MethodConfig(_Strict):
    kind: Literal["qlora", "lora", "dora"] = "qlora"  # qlora: 4-bit NF4 base with double quantization
    rslora: bool = False  # rank-stabilized scaling alpha/sqrt(r)
    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class OptimConfig(_Strict):
    # paged 8-bit AdamW where bitsandbytes has it (CUDA); plain AdamW otherwise, said in the pre-flight
    optimizer: Literal["auto", "paged_adamw_8bit", "adamw_8bit", "adamw_torch"] = "auto"
    lr: float = Field(2e-4, gt=0)
    scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_tokens: int = Field(8192, ge=64, description="tokens per packed micro-batch (padding-free)")
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)


class EvalConfig(_Strict):
    every_steps: int = Field(50, ge=1, description="eval loss, a checkpoint and sample generations every N steps")
    early_stopping_patience: int | None = Field(3, ge=1, description="evaluations without improvement; null: off")
    sample_prompts: int = Field(2, ge=0, description="prompts (validation, else train) generated from, logged next to the loss")
    sample_max_new_tokens: int = Field(64, ge=1)


class ExportConfig(_Strict):
    merged: bool = False  # merged safetensors (vLLM, TGI)
    gguf: Literal["none", "f16", "q8_0"] = "none"  # llama.cpp / Ollama, with a Modelfile


class TrainConfig(FileConfig):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    base_model: str = "embedded"
    data: list[DataSource] = Field(min_length=1)
    validation: str | None = Field(default=None, description="a file of held-out records; default: none (no eval loss)")
    method: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    max_seq_len: int = Field(1024, ge=16)
    train_on_inputs: bool = False
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="overrides epochs")
    # logging reads the loss back from the GPU, a sync that stalls small models; every step on short runs
    log_every_steps: int = Field(10, ge=1)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 where the device supports it
    gradient_checkpointing: bool = True
    # None: torch_varlen (PyTorch's FlashAttention-2 varlen kernel, train/attention.py) on an sm80+ GPU in
    # half precision, else the model's default (sdpa). Packed examples stay isolated with each (position ids
    # restart per example); the pre-flight checks that on the loaded model.
    attn_implementation: str | None = None
    # rows: packed rows stay rows with a block-diagonal mask each (sdpa, eager); flat: a micro-batch is one
    # sequence (varlen kernels: torch_varlen, flash_attention_2). auto picks by attn_implementation (train/packing.py)
    packing: Literal["auto", "rows", "flat"] = "auto"
    keep_checkpoints: int = Field(2, ge=1, description="latest checkpoints kept for resume (the best is kept too)")
    seed: int = 0
    output_dir: str | None = Field(default=None, description="default: runs/<name> next to the config")
    workspace: str | None = Field(default="workspace", description="the workspace folder to register the run in; null: none")
    price_per_gpu_hour: float = Field(0.0, ge=0, description="for the projected cost after the first steps")
    memory_limit_gb: float | None = Field(default=None, gt=0, description="pre-flight memory budget; default: what the device has free")
    plugins: list[str] = Field(default_factory=list, description=(
        "your own modules that register shapes (module names, or .py paths relative to the config file), imported "
        "before the config is checked (docs/extending.md)"))

    @model_validator(mode="after")
    def _weights(self) -> "TrainConfig":
        total = sum(s.weight or 0.0 for s in self.data)
        if total > 1.0 + 1e-9:
            raise ValueError(f"data weights add up to {total:g}; they are shares of the training examples and must not exceed 1")
        if total and all(s.weight for s in self.data) and abs(total - 1.0) > 1e-6:
            raise ValueError(f"every data source has a weight but they add up to {total:g}, not 1")
        return self

    @property
    def output_path(self) -> Path:
        return self.resolve(self.output_dir or f"runs/{self.name}")


def parse_train_config(data: Any, base_dir: Path | None = None, source: str = "<config>") -> TrainConfig:
    """A validated train config from a mapping: its ``plugins`` imported first; TrainConfigError names every bad key."""
    import_plugins(data, base_dir, source, TrainConfigError)
    return validate(TrainConfig, data, base_dir, source, TrainConfigError)


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML train config; TrainConfigError names the file and every bad key."""
    return parse_train_config(read_yaml(path, TrainConfigError), Path(path).parent, str(path))
