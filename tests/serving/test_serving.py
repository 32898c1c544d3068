"""`pipeline-serve` (MLflow's scoring server behind the request guard) on the registry's champion, over
real HTTP on 127.0.0.1: answers for good requests, clear 4xx errors for bad ones that name what is wrong
and carry no stack trace, path or copy of the request; `mlflow models serve` serves the same model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from builders import inside, make_project, write_sentiment_tsv
from helpers import free_port, guarded_serve_command, post, running_server, serve_command, venv_env
from pipeline import paths, tracking
from pipeline.prediction.inference import Predictor
from pipeline.registry import promote
from stages import evaluate

# The second tier (`make test-e2e`): real DVC queues, torchrun, whole-DAG runs, HTTP servers.
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(
    trained: dict[str, Path], tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, str]]:
    """The good model registered and promoted in a project of its own, served by one server for the module:
    (its /invocations URL, the runtime evaluate registered it with, the project's tracking URI)."""
    base = tmp_path_factory.mktemp("serving")
    root = make_project(base / "project", write_sentiment_tsv(base / "unused.tsv"), tiny_model)
    shutil.copytree(trained["good"], root / paths.MODEL)
    shutil.copytree(trained["good_onnx"], root / paths.ONNX)
    shutil.copytree(trained["split_a"], root / paths.SPLIT)
    with inside(root, PIPELINE_CACHE_DIR=str(base / "cache")):
        evaluate.main()
        assert promote.run([]) == 0
        uri = tracking.tracking_uri()
        runtime = json.loads((paths.EVAL / "runtimes.json").read_text())["served"]
    port = free_port()
    cmd = guarded_serve_command("models:/sentiment-classifier@champion", port)
    # Small request limits, so the tests can cross them cheaply (defaults: 1,000 inputs, 1,000,000
    # characters, 4,000,000 bytes).
    env = venv_env(
        MLFLOW_TRACKING_URI=uri,
        PIPELINE_MAX_REQUEST_TEXTS="8",
        PIPELINE_MAX_REQUEST_CHARS="150000",
        PIPELINE_MAX_REQUEST_BYTES="400000",
    )
    with running_server(cmd, f"http://127.0.0.1:{port}/ping", env, base / "serve.log"):
        yield f"http://127.0.0.1:{port}/invocations", runtime, uri


@pytest.fixture(scope="module")
def served(server: tuple[str, str, str]) -> str:
    return server[0]


def test_served_champion_answers_like_the_local_model(server: tuple[str, str, str], trained: dict[str, Path]) -> None:
    served, runtime, _ = server
    texts = ["a great and wonderful film", "dull boring plot", "the cast"]
    status, answer = post(served, json.dumps({"inputs": texts}).encode())
    assert status == 200
    # The served model runs the runtime evaluate chose (int8 ONNX unless it cost accuracy): the same here.
    assert runtime in ("onnx-int8", "onnx")
    expected = Predictor(trained["good"], runtime=runtime, export_dir=trained["good_onnx"]).predict(texts)
    predictions = answer["predictions"]
    assert [p["label"] for p in predictions] == expected["label"].tolist()
    assert [p["score"] for p in predictions] == pytest.approx(expected["score"].tolist(), abs=1e-6)
    assert set(predictions[0]) == {"label", "score", "score_negative", "score_positive"}


def test_empty_list_gives_no_predictions(served: str) -> None:
    status, answer = post(served, json.dumps({"inputs": []}).encode())
    assert (status, answer) == (200, {"predictions": []})


def test_a_100_kb_text_is_truncated_not_refused(served: str) -> None:
    status, answer = post(served, json.dumps({"inputs": ["great " * 17_000]}).encode())
    assert status == 200 and answer["predictions"][0]["label"] in ("negative", "positive")


def assert_clean(answer: dict) -> None:
    """A served error is its message: no stack trace, no server path, no copy of the request."""
    text = json.dumps(answer)
    assert "stack_trace" not in answer and "Traceback" not in text and "Failed to predict data" not in text
    assert "/site-packages/" not in text and "/pipeline/" not in text


# MLflow checks the inputs against the model's type hint (`list[str]`) and names the offending elements;
# the guard names an unknown key and where the JSON breaks.
@pytest.mark.parametrize(
    ("body", "names"),
    [
        (json.dumps({"inputs": [1, 2]}).encode(), ["list[str]", "('1', 'Expected type str, but got int')"]),
        (json.dumps({"inputs": ["fine", None]}).encode(), ["('None', 'Expected type str, but got NoneType')"]),
        (json.dumps({"texts": ["a"]}).encode(), ["unknown key 'texts' in the request; a request has inputs"]),
        (json.dumps({"inputs": ["a"], "extra": 1}).encode(), ["unknown key 'extra'"]),
        (json.dumps({"inputs": ["a"], "params": {"temperature": 0.5}}).encode(),
         ["unknown params key 'temperature'; this model takes none"]),
        (json.dumps({"params": {}}).encode(), ["the request has no 'inputs' key"]),
        (b"{not json", ["the body is not valid JSON", "line 1 column 2"]),
    ],
    ids=["not-strings", "a-null", "unknown-key", "extra-key", "unknown-param", "no-inputs", "not-json"],
)  # fmt: skip
def test_bad_requests_get_a_400_whose_message_names_what_is_wrong(served: str, body: bytes, names: list[str]) -> None:
    status, answer = post(served, body)
    assert status == 400, answer
    assert all(name in answer["message"] for name in names), answer
    assert_clean(answer)


def test_a_json_body_sent_as_csv_gets_a_400_without_a_stack_trace(served: str) -> None:
    status, answer = post(served, json.dumps({"inputs": ["a fine film"]}).encode(), content_type="text/csv")
    assert status == 400 and answer["message"], answer
    assert_clean(answer)


def test_a_body_over_the_byte_limit_gets_a_short_413_naming_the_limit_before_it_is_read(served: str) -> None:
    body = json.dumps({"inputs": ["great " * 10_000] * 8}).encode()  # 480 KB
    status, answer = post(served, body)
    assert status == 413, answer
    assert answer["message"] == "the request body is over 400000 bytes, the limit (PIPELINE_MAX_REQUEST_BYTES)"
    assert len(json.dumps(answer)) < 200


def test_mlflow_models_serve_serves_the_same_champion(server: tuple[str, str, str], tmp_path: Path) -> None:
    """The guard is in front of MLflow's app, not a server of its own: MLflow's command answers the same."""
    served, _, uri = server
    texts = ["a great and wonderful film", "dull boring plot"]
    port = free_port()
    env = venv_env(MLFLOW_TRACKING_URI=uri)
    with running_server(serve_command("models:/sentiment-classifier@champion", port), f"http://127.0.0.1:{port}/ping",
                        env, tmp_path / "mlflow-serve.log"):  # fmt: skip
        status, plain = post(f"http://127.0.0.1:{port}/invocations", json.dumps({"inputs": texts}).encode())
    assert status == 200
    assert post(served, json.dumps({"inputs": texts}).encode()) == (200, plain)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (["a fine film"] * 9, "9 inputs in one request; the limit is 8 (PIPELINE_MAX_REQUEST_TEXTS)"),
        (["great " * 13_000] * 2, "156000 characters in one request; the limit is 150000 (PIPELINE_MAX_REQUEST_CHARS)"),
        (["a fine film", "   "], "input 1: empty text"),
        ([""], "input 0: empty text"),
    ],
    ids=["too-many-texts", "too-many-characters", "blank-text", "empty-text"],
)
def test_requests_beyond_the_limits_or_with_empty_texts_get_a_400_naming_why(
    served: str, inputs: list[str], message: str
) -> None:
    status, answer = post(served, json.dumps({"inputs": inputs}).encode())
    assert status == 400 and message in answer["message"], answer


def test_a_request_at_the_limit_is_answered(served: str) -> None:
    status, answer = post(served, json.dumps({"inputs": ["a fine film"] * 8}).encode())
    assert status == 200 and len(answer["predictions"]) == 8
