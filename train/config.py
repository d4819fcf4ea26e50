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

from curate.config import FileConfig, check_shape, shape_for_mapping, import_plugins, read_yaml, validate


class TrainConfigError(ValueError):
    """An invalid train config; the message names every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo is an error, not a silently ignored key


class DataSource(_Strict):
    """One training source: curate's export or any file curate reads, with its share of the examples."""

    path: str = Field(description="a file, folder or glob curate reads (curate's data/train.jsonl is chat-shaped already), relative to the config")
    weight: float | None = Field(default=None, gt=0, le=1, description=(
        "share of the training examples drawn from this source (0.15: 15%), e.g. general data mixed in against "
        "forgetting. Sources without a weight share what the weighted ones leave, in proportion to their sizes; "
        "weights must not add up to more than 1 (exactly 1 when every source has one)"))
    shape: str = Field("auto", description=(
        "record layout as in a curate input: auto detects it; mapped needs `mapping` (a mapping implies it); or a "
        "registered shape"))
    mapping: dict[str, str | list[str]] | None = Field(default=None, description=(
        "role -> column(s) for shape mapped, e.g. {user: question, assistant: answer}; giving a mapping implies shape mapped"))
    limit: int | None = Field(default=None, ge=1, description="read at most this many records from this source; null: all")

    @field_validator("shape")
    @classmethod
    def _known_shape(cls, value: str, info: ValidationInfo) -> str:
        return check_shape(value, info)

    @model_validator(mode="after")
    def _mapping_means_mapped(self):
        self.shape = shape_for_mapping(self.shape, self.mapping)
        return self


class MethodConfig(_Strict):
    """The adapter: which kind, its rank and scaling, and the layers it wraps."""

    kind: Literal["qlora", "lora", "dora"] = Field("qlora", description=(
        "qlora: LoRA on a 4-bit NF4 base with double quantization (least memory, a little slower); lora: on the base "
        "in its compute precision; dora: weight-decomposed LoRA (slower, sometimes better at low rank)"))
    rslora: bool = Field(False, description="rank-stabilized scaling alpha/sqrt(r) instead of alpha/r: keeps updates sized as r grows")
    r: int = Field(16, ge=1, description="adapter rank: trainable parameters grow linearly with it; 8-64 is the usual range")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator (update scaled by alpha/r); usually 2 x r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input, a regularizer for small data sets")
    target_modules: str | list[str] = Field("all-linear", description=(
        "layers that get an adapter: all-linear (every linear layer but the output head), or a list of module "
        "names such as [q_proj, v_proj]"))
    objective: Literal["sft", "dpo", "orpo", "kto"] = Field("sft", description=(
        "what the adapter learns: sft imitates the answers of conversations; dpo prefers the chosen completion of "
        "preference pairs over the rejected one (TRL's DPOTrainer, the base without the adapter as reference); "
        "orpo learns the chosen answers and an odds-ratio preference for them in one loss, with no reference "
        "model (ORPO); kto learns from completions labeled desirable or not (TRL's KTOTrainer; a pair gives one "
        "of each). The data is read by curate's readers: every preference and KTO layout curate knows"))
    beta: float = Field(0.1, gt=0, description=(
        "dpo and kto: how far the adapter may move from the reference model (TRL's beta; lower lets it drift "
        "further); orpo: the weight of the odds-ratio term against the chosen answers' NLL (the paper's lambda); "
        "unused by sft"))
    sft_weight: float = Field(0.0, ge=0, description=(
        "dpo: weight of a supervised loss (mean negative log-likelihood of the chosen completion's trained tokens) "
        "added to the DPO loss, as in RPO and Llama 3's preference training. Plain DPO only widens the gap between "
        "chosen and rejected and often lowers the chosen answer's own likelihood; 0.2-1.0 keeps the chosen answers "
        "likely. 0 is plain DPO; only dpo takes it"))


class OptimConfig(_Strict):
    """Optimizer, learning-rate schedule and batch size."""

    optimizer: Literal["auto", "paged_adamw_8bit", "adamw_8bit", "adamw_torch"] = Field("auto", description=(
        "auto: paged 8-bit AdamW where bitsandbytes has it (CUDA), plain AdamW otherwise (said in the pre-flight); "
        "or name one"))
    lr: float = Field(2e-4, gt=0, description="peak learning rate, reached after warmup")
    scheduler: Literal["cosine", "linear", "constant_with_warmup"] = Field("cosine", description="learning-rate decay after warmup")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of the optimizer steps spent ramping the learning rate up from 0")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on the adapter weights")
    batch_tokens: int = Field(8192, ge=64, description=(
        "tokens per packed micro-batch (padding-free); raise it on a GPU with memory to spare, lower it when the "
        "pre-flight says it will not fit"))
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step: an effective batch of batch_tokens x grad_accum tokens")
    max_grad_norm: float = Field(1.0, gt=0, description="gradients are clipped to this global norm")


class EvalConfig(_Strict):
    """Evaluation during training: eval loss on ``validation``, checkpoints, early stopping, samples."""

    every_steps: int = Field(50, ge=1, description="eval loss, a checkpoint and sample generations every N steps")
    early_stopping_patience: int | None = Field(3, ge=1, description="evaluations without improvement; null: off")
    sample_prompts: int = Field(2, ge=0, description="prompts (validation, else train) generated from, logged next to the loss")
    sample_max_new_tokens: int = Field(64, ge=1, description="tokens generated per sample prompt (greedy)")


class ExportConfig(_Strict):
    """What is written beside the adapter when training ends."""

    merged: bool = Field(False, description="also write the base with the adapter merged in, as safetensors (merged/), for vLLM or TGI")
    gguf: Literal["none", "f16", "q8_0"] = Field("none", description=(
        "also write model-<kind>.gguf and an Ollama Modelfile (Llama-architecture bases), its logits checked against "
        "the merged model: f16 half precision, q8_0 8-bit (half the size); none: no GGUF"))


class TrainConfig(FileConfig):
    """A `train run` config: base model, data mix, adapter method, optimizer, evaluation and export."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description=(
        "the run's name: letters, digits, _ . -; names the run folder (runs/<name>) and the workspace row"))
    base_model: str = Field("embedded", description=(
        "embedded (SmolLM2-135M-Instruct from the packaged GGUF, no download), a local model folder or a hub id"))
    data: list[DataSource] = Field(min_length=1, description="training sources, mixed by weight; at least one")
    validation: str | None = Field(default=None, description="a file of held-out records; default: none (no eval loss)")
    method: MethodConfig = Field(default_factory=MethodConfig, description="the adapter: kind, rank, scaling, target layers")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimizer, learning rate schedule, batch size")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="eval loss, checkpoints, early stopping and samples during training")
    export: ExportConfig = Field(default_factory=ExportConfig, description="merged and GGUF exports written after training")
    max_seq_len: int = Field(1024, ge=16, description=(
        "tokens per example after the chat template; a longer conversation is cut or dropped as `truncation` says"))
    truncation: Literal["turn", "drop", "tokens"] = Field("turn", description=(
        "a conversation longer than max_seq_len: turn cuts it after the last answer that ends within max_seq_len, so no "
        "half answer is trained (rejected when not even the first answer fits); drop rejects it; tokens cuts at "
        "max_seq_len, inside an answer if it falls there (that half answer is trained without its end of turn). Cut "
        "records are counted in the pre-flight summary and the manifest, rejected ones listed in rejected.jsonl"))
    train_on_inputs: bool = Field(False, description="false: loss on assistant turns only; true: on every token, prompts included")
    epochs: float = Field(1.0, gt=0, description="passes over the training examples; fractions allowed (0.5: half)")
    max_steps: int | None = Field(default=None, ge=1, description="optimizer steps to run; overrides epochs (a short smoke run)")
    # logging reads the loss back from the GPU, a sync that stalls small models; every step on short runs
    log_every_steps: int = Field(10, ge=1, description="steps between loss lines in metrics.jsonl; 1 on short runs")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description=(
        "compute precision of the trained weights' forward and backward: auto picks bf16 where the device supports it, else fp32"))
    gradient_checkpointing: bool = Field(True, description="recompute activations in the backward pass: less memory, about 30% slower")
    # None: torch_varlen (PyTorch's FlashAttention-2 varlen kernel, train/attention.py) on an sm80+ GPU in
    # half precision, else the model's default (sdpa). Packed examples stay isolated with each (position ids
    # restart per example); the pre-flight checks that on the loaded model.
    attn_implementation: str | None = Field(default=None, description=(
        "attention kernel: null picks torch_varlen (PyTorch's FlashAttention-2 varlen kernel) on an sm80+ GPU in half "
        "precision, else the model's default (sdpa); or name one: torch_varlen, flash_attention_2, sdpa, eager. Packed "
        "examples stay isolated with each; the pre-flight checks it"))
    packing: Literal["auto", "rows", "flat"] = Field("auto", description=(
        "rows: packed rows stay rows, each with a block-diagonal mask (sdpa, eager); flat: a micro-batch is one "
        "sequence (varlen kernels); auto picks by attn_implementation"))
    keep_checkpoints: int = Field(2, ge=1, description="latest checkpoints kept for resume (the best is kept too)")
    seed: int = Field(0, description="seed of the data order, the mix draw, adapter init and sampling")
    output_dir: str | None = Field(default=None, description="default: runs/<name> next to the config")
    workspace: str | None = Field(default="workspace", description="the workspace folder to register the run in; null: none")
    price_per_gpu_hour: float = Field(0.0, ge=0, description="for the projected cost after the first steps")
    memory_limit_gb: float | None = Field(default=None, gt=0, description="pre-flight memory budget; default: what the device has free")
    plugins: list[str] = Field(default_factory=list, description=(
        "your own modules that register shapes (module names, or .py paths relative to the config file), imported "
        "before the config is checked (docs/extending.md)"))

    @model_validator(mode="after")
    def _weights(self) -> TrainConfig:
        total = sum(s.weight or 0.0 for s in self.data)
        if total > 1.0 + 1e-9:
            raise ValueError(f"data weights add up to {total:g}; they are shares of the training examples and must not exceed 1")
        if total and all(s.weight for s in self.data) and abs(total - 1.0) > 1e-6:
            raise ValueError(f"every data source has a weight but they add up to {total:g}, not 1")
        if self.method.sft_weight and self.method.objective != "dpo":
            raise ValueError(f"method.sft_weight adds a supervised term to the dpo loss; objective is {self.method.objective}")
        if self.method.objective != "sft" and self.train_on_inputs:
            raise ValueError(f"train_on_inputs applies to sft; a {self.method.objective} objective scores completions only")
        return self

    @property
    def output_path(self) -> Path:
        """The run folder: ``output_dir``, else ``runs/<name>``, relative to the config file."""
        return self.resolve(self.output_dir or f"runs/{self.name}")


def parse_train_config(data: Any, base_dir: Path | None = None, source: str = "<config>") -> TrainConfig:
    """A validated :class:`TrainConfig` from a mapping (parsed YAML): its ``plugins`` imported first; relative paths
    resolve against ``base_dir``; TrainConfigError names ``source`` and every bad key."""
    import_plugins(data, base_dir, source, TrainConfigError)
    return validate(TrainConfig, data, base_dir, source, TrainConfigError)


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML train config; TrainConfigError names the file and every bad key."""
    return parse_train_config(read_yaml(path, TrainConfigError), Path(path).parent, str(path))
