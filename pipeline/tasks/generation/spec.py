"""Decoder language models' names, metrics and params: a classification dataset cast as generation, and
free text.

`generative_classification` fine-tunes a causal LM (SmolLM2 by default in its preset) to answer each text,
wrapped in `tokenize.prompt.template`, with its label's word (`tokenize.prompt.label_words`). Data, splits,
labels, the TF-IDF baseline and every test metric are single-label classification's, so the encoder and
the decoder routes compare on the same test split; what changes:

- training: the loss is on the answer's tokens only (pipeline/tasks/generation/prompting.py), LoRA or any peft method
  that applies to decoders, or full fine-tuning;
- the label is read by scoring: the log-probability of each label word's first token after the prompt,
  one forward pass per text (validation, test, serving alike); the scores are the label logits that
  temperature scaling, curves and calibration use;
- a free greedy generation of each test text is also made, and the share that is no label word at all
  reported (`not_a_label_share`): what a user who just prompts would get;
- evaluate also prompts the untuned base model zero-shot and few-shot (`evaluate.prompting`), the
  baselines a fine-tuned decoder must beat.

`text_generation` answers each prompt with free text, scored by ROUGE-L, chrF, BLEU and exact match.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pipeline.errors import PipelineError
from pipeline.tasks.base import TaskSpec
from pipeline.tasks.classification.spec import SingleLabelSpec

if TYPE_CHECKING:
    from pipeline.schema import Params

RESPONSE_STATS = ("rouge_l", "chrf", "bleu", "exact_match")  # the order of scoring.response_scores


class DecoderSpec:
    """What every decoder task shares: a causal LM whose vocabulary is the head, prompted through the chat
    template, trained on the answer's tokens. Listed first among a task's bases."""

    peft_task_type: ClassVar[str] = "CAUSAL_LM"
    reads_prompts: ClassVar[bool] = True
    pools_a_text: ClassVar[bool] = False  # the vocabulary is the head
    model_loss_counts_items: ClassVar[bool] = True  # the causal LM loss takes num_items_in_batch
    not_exportable: ClassVar[str | None] = (
        "decoder models are not exported to ONNX yet (the export covers encoder classifiers); PyTorch serves it"
    )

    def check_params(self, params: Params) -> None:
        super().check_params(params)  # type: ignore[misc]
        name = params.task
        if params.ingest.format == "conll":
            raise ValueError(f"ingest.format: task {name} needs a text format, not conll")
        if params.tokenize.context != "none" or params.tokenize.mark_case:
            key = "context" if params.tokenize.context != "none" else "mark_case"
            raise ValueError(f"tokenize.{key}: for token_classification (task is {name})")
        if params.ingest.text_pair:
            raise ValueError(f"ingest.text_column: task {name} reads one text per prompt, not pairs")
        if params.tokenize.truncation != "head":
            raise ValueError(f"tokenize.truncation: task {name} cuts the text's end only (head)")
        if params.tokenize.max_chars is not None:
            raise ValueError(f"tokenize.max_chars: for text classification; task {name} cuts its prompt's text")
        if params.finetune.class_weights is not None or params.finetune.label_smoothing:
            key = "class_weights" if params.finetune.class_weights is not None else "label_smoothing"
            raise ValueError(f"finetune.{key}: not available for {name} (the loss is the answer's tokens)")
        if params.finetune.head_learning_rate is not None:
            raise ValueError(f"finetune.head_learning_rate: a decoder has no new head ({name})")

    def check_model(self, model_config: dict[str, Any], source: str) -> None:
        # The vocabulary is the head: only a causal LM can write the answer (an encoder stops later, at
        # the tokenizer's missing end-of-text token, or trains nonsense).
        architectures = model_config.get("architectures") or []
        if not any(str(name).endswith("ForCausalLM") for name in architectures):
            raise PipelineError(
                f"model.source: {source} is not a causal language model (architectures: "
                f"{', '.join(map(str, architectures)) or 'none'}); task {self.name} needs a decoder such as "
                "SmolLM2 (presets/sentiment-smollm2.yaml)"
            )


class GenerativeClassificationSpec(DecoderSpec, SingleLabelSpec):
    """One label per text, answered in words by a decoder LM and read off the label words' scores."""

    name: ClassVar[str] = "generative_classification"
    description: ClassVar[str] = (
        "a decoder LM answers each text (tokenize.prompt.template) with its label's word; one label per text"
    )


class TextGenerationSpec(DecoderSpec, TaskSpec):
    """Free text: a decoder LM answers each prompt with a response (`ingest.label_column` holds the
    reference responses), scored by ROUGE-L, chrF, BLEU and exact match against the reference."""

    name: ClassVar[str] = "text_generation"
    generates_text: ClassVar[bool] = True
    description: ClassVar[str] = (
        "a decoder LM answers each text (tokenize.prompt.template) with free text; ingest.label_column holds the "
        "reference responses"
    )
    problem_type: ClassVar[str] = "text_generation"
    headline_metric: ClassVar[str] = "rouge_l"
    summary_metrics: ClassVar[tuple[str, ...]] = RESPONSE_STATS
    validation_metrics_names: ClassVar[tuple[str, ...]] = ()  # the validation loss on the responses decides
    baseline_name: ClassVar[str] = "lead (the text's first words, as many as a median train response)"
    example_unit: ClassVar[str] = "texts"
    error_examples_note: ClassVar[str] = (
        "The generations with the highest and the lowest ROUGE-L against the reference (score: ROUGE-L F1)."
    )
