"""Batch prediction: any supported file in, the same rows plus predictions out, equal to in-process
predictions; streamed in chunks; bad input stops with the row and leaves no output."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from builders import sentiment_rows
from helpers import expect_user_error
from pipeline.prediction.inference import Predictor
from pipeline.serving import predict


@pytest.fixture
def texts() -> pd.DataFrame:
    return pd.DataFrame({"id": range(50), "review": [text for _, text in sentiment_rows(50, seed=3)]})


def write(frame: pd.DataFrame, path: Path) -> Path:
    kind = predict.file_format(path)
    if kind == "parquet":
        frame.to_parquet(path, index=False)
    elif kind == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, sep="\t" if kind == "tsv" else ",", index=False)
    return path


def read(path: Path) -> pd.DataFrame:
    kind = predict.file_format(path)
    if kind == "parquet":
        return pd.read_parquet(path)
    if kind == "jsonl":
        return pd.read_json(path, lines=True)
    return pd.read_csv(path, sep="\t" if kind == "tsv" else ",")


@pytest.mark.parametrize("source,target", [("csv", "parquet"), ("jsonl", "csv"), ("parquet", "jsonl"), ("tsv", "tsv")])
def test_predictions_equal_in_process_predictions(
    trained: dict[str, Path], texts: pd.DataFrame, tmp_path: Path, source: str, target: str
) -> None:
    source_file = write(texts, tmp_path / f"in.{source}")
    target_file = tmp_path / "out" / f"predictions.{target}"
    predict.run(
        [
            "--model",
            str(trained["good"]),
            "--input",
            str(source_file),
            "--output",
            str(target_file),
            "--text-column",
            "review",
            "--chunk-size",
            "7",
            "--batch-size",
            "4",
        ]
    )
    out = read(target_file)
    expected = Predictor(trained["good"]).predict(texts["review"].tolist())
    assert (
        out["id"].astype(str).tolist() == texts["id"].astype(str).tolist()
        and out["review"].tolist() == texts["review"].tolist()
    )
    assert out["predicted_label"].tolist() == expected["label"].tolist()
    for column in ("score", "score_negative", "score_positive"):
        assert out[f"predicted_{column}"].to_numpy() == pytest.approx(expected[column].to_numpy(), abs=1e-6)


def test_predicts_from_a_registry_uri_what_the_registered_weights_predict(
    register, trained: dict[str, Path], tmp_path: Path, texts: pd.DataFrame
) -> None:
    register("good")
    source_file = write(texts, tmp_path / "in.csv")
    predict.run(
        [
            "--model",
            "models:/sentiment-classifier@challenger",
            "--runtime",
            "torch",
            "--input",
            str(source_file),
            "--output",
            str(tmp_path / "out.parquet"),
            "--text-column",
            "review",
        ]
    )
    out = pd.read_parquet(tmp_path / "out.parquet")
    expected = Predictor(trained["good"]).predict(texts["review"].tolist())  # the folder that was registered
    assert out["review"].tolist() == texts["review"].tolist()
    assert out["predicted_label"].tolist() == expected["label"].tolist()
    for column in ("score", "score_negative", "score_positive"):
        assert out[f"predicted_{column}"].to_numpy() == pytest.approx(expected[column].to_numpy(), abs=1e-6)


def test_reads_and_writes_in_chunks(
    trained: dict[str, Path], texts: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    original = Predictor.predict
    monkeypatch.setattr(
        Predictor, "predict", lambda self, batch, pairs=None: seen.append(len(batch)) or original(self, batch, pairs)
    )
    source_file = write(texts, tmp_path / "in.parquet")
    predict.run(
        [
            "--model",
            str(trained["good"]),
            "--input",
            str(source_file),
            "--output",
            str(tmp_path / "o.parquet"),
            "--text-column",
            "review",
            "--chunk-size",
            "16",
        ]
    )
    assert seen == [16, 16, 16, 2]


def test_an_empty_text_names_its_row_and_writes_nothing(
    trained: dict[str, Path],
    texts: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    texts.loc[37, "review"] = "   "
    source_file = write(texts, tmp_path / "in.jsonl")
    target = tmp_path / "out.csv"
    target.write_text("previous results\n")
    monkeypatch.setattr(
        "sys.argv",
        [
            "predict",
            "--model",
            str(trained["good"]),
            "--input",
            str(source_file),
            "--output",
            str(target),
            "--text-column",
            "review",
            "--chunk-size",
            "10",
        ],
    )
    err = expect_user_error(predict.main, capsys)
    assert "row 38" in err and "review" in err
    assert target.read_text() == "previous results\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_unquoted_separator_is_an_error_not_lost_text(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in.csv").write_text("text\na great, moving film\n")
    monkeypatch.setattr(
        "sys.argv",
        [
            "predict",
            "--model",
            str(trained["good"]),
            "--input",
            str(tmp_path / "in.csv"),
            "--output",
            str(tmp_path / "out.csv"),
        ],
    )
    assert "more fields than the header" in expect_user_error(predict.main, capsys)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--text-column", "body"], "no column 'body'"),
        (["--input", "missing.csv"], "input file not found"),
        (["--output", "out.xlsx"], "unknown file type '.xlsx'"),
        (["--model", "no/such/dir"], "no such model folder"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    trained: dict[str, Path],
    texts: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    write(texts, tmp_path / "in.csv")
    base = {"--model": str(trained["good"]), "--input": "in.csv", "--output": "out.csv", "--text-column": "review"}
    base.update(dict(zip(args[::2], args[1::2])))
    monkeypatch.setattr("sys.argv", ["predict", *[x for pair in base.items() for x in pair]])
    assert message in expect_user_error(predict.main, capsys)
    assert not (tmp_path / "out.csv").exists()


def test_a_corrupt_model_file_is_a_one_line_error(
    trained: dict[str, Path],
    texts: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained["good"], model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated download
    monkeypatch.setattr(
        "sys.argv",
        [
            "predict",
            "--model",
            str(model),
            "--input",
            str(write(texts, tmp_path / "in.csv")),
            "--output",
            str(tmp_path / "out.csv"),
            "--text-column",
            "review",
        ],
    )
    assert "cannot load the model" in expect_user_error(predict.main, capsys)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_an_output_path_equal_to_the_input_is_refused_and_the_input_is_kept(
    trained: dict[str, Path],
    texts: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    source = write(texts, tmp_path / f"in.{kind}")
    before = source.read_bytes()
    # the same file under two spellings: a relative path and the absolute one
    argv = ["--model", str(trained["good"]), "--input", source.name, "--output", str(source), "--text-column", "review"]
    monkeypatch.setattr("sys.argv", ["predict", *argv])
    assert "the output is the input file" in expect_user_error(predict.main, capsys)
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "csv"])
def test_an_earlier_output_given_as_input_is_refused_naming_its_prediction_columns(
    trained: dict[str, Path],
    texts: pd.DataFrame,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    first = tmp_path / f"first.{kind}"
    args = ["--model", str(trained["good"]), "--text-column", "review"]
    predict.run([*args, "--input", str(write(texts, tmp_path / "in.csv")), "--output", str(first)])
    again = tmp_path / f"again.{kind}"
    monkeypatch.setattr("sys.argv", ["predict", *args, "--input", str(first), "--output", str(again)])
    err = expect_user_error(predict.main, capsys)
    assert "already has prediction columns (predicted_label, predicted_score" in err
    assert not again.exists()


@pytest.mark.parametrize("kind", ["csv", "tsv"])
def test_texts_with_line_breaks_quotes_and_separators_come_back_unchanged_from_a_csv_output(
    trained: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    texts = [
        "a bare\rreturn",
        "a\nnewline",
        "a\r\nwindows break",
        'a "quoted" word',
        "a, comma",
        "a\ttab",
        "ctl\x01\x1f",
    ]
    source = write(pd.DataFrame({"review": texts}), tmp_path / "in.parquet")
    target = tmp_path / f"out.{kind}"
    predict.run(
        ["--model", str(trained["good"]), "--input", str(source), "--output", str(target), "--text-column", "review"]
    )
    out = pd.read_csv(target, sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False)
    assert out["review"].tolist() == texts
    assert out["predicted_label"].tolist() == Predictor(trained["good"]).predict(texts)["label"].tolist()


def test_a_model_trained_with_tokenize_max_chars_cuts_texts_the_same_way_when_it_predicts(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    from pipeline.card import ModelCard

    model = tmp_path / "model"
    shutil.copytree(trained["good"], model)
    card = ModelCard.read(model)
    card.model_copy(update={"encoding": card.encoding.model_copy(update={"max_chars": 20})}).write(model)
    text = "a great and wonderful film, " + "dull boring plot " * 20
    cut = Predictor(model).logits([text])
    assert cut == pytest.approx(Predictor(trained["good"]).logits([text[:20]]), abs=1e-6)
    assert cut != pytest.approx(Predictor(trained["good"]).logits([text]), abs=1e-3)
