"""Ingest and split for decoder tasks: labels as single-label classification reads them, or texts with
their reference responses (instruction and input columns, chats)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline import data
from pipeline.errors import PipelineError
from pipeline.tasks.base import Reader
from pipeline.tasks.classification.reading import SingleLabelReader
from pipeline.tasks.generation.prompting import Demonstration, History
from pipeline.tasks.generation.spec import GenerativeClassificationSpec, TextGenerationSpec

if TYPE_CHECKING:
    from pipeline.schema import IngestParams

INPUT_SEPARATOR = "\n\n"  # between an instruction and its input, as Alpaca's prompts have them
CHAT_TEXT, CHAT_RESPONSE, CHAT_HISTORY = "chat_text", "chat_response", "chat_history"  # what a chat is read into
CHAT_COLUMNS = {"text_column": CHAT_TEXT, "label_column": CHAT_RESPONSE}  # the params that read them


class GenerativeClassificationReader(GenerativeClassificationSpec, SingleLabelReader):
    pass


class TextGenerationReader(TextGenerationSpec, Reader):
    def read(self, path: Path, params: IngestParams) -> tuple[pd.DataFrame, int, dict[str, dict[str, int]]]:
        """Texts and their reference responses; a record without a text or without a response has nothing
        to learn or score and is dropped (counted), as are repeated texts after the first."""
        raw, where = data.read_raw_table(path, params)
        records, dropped, dropped_rows = len(raw), {}, {}
        if params.messages_column:
            raw, params, bad_chats = chats(raw, path, where, params)
            dropped, dropped_rows = bad_chats["dropped"], bad_chats["dropped_rows"]
        if params.input_column:
            raw = with_inputs(raw, path, params)
        for reason, column in (("no_text", params.text_column), ("no_response", params.label_column)):
            if column in raw.columns:  # (select_texts names a missing column)
                empty = raw[column].map(lambda v: data.is_missing(v) or not str(v).strip())
                raw, dropped[reason] = raw[~empty], int(empty.sum())
        table = data.select_texts(raw, path, where, params)
        table[data.LABEL] = table[data.LABEL].map(lambda v: str(v).strip())
        if CHAT_HISTORY in raw.columns:
            table[data.HISTORY] = raw[CHAT_HISTORY]
        repeated = data.example_keys(table).duplicated()
        dropped["duplicate"] = int(repeated.sum())
        changes: dict[str, Any] = {"dropped": dropped, "repaired": {}}
        if any(dropped_rows.values()):
            changes["dropped_rows"] = dropped_rows
        return table[~repeated].reset_index(drop=True), records, changes

    def label_order(self, tables: list[pd.DataFrame], params: IngestParams) -> list[str]:
        return []  # responses are free text: no label set

    def describe(self, table: pd.DataFrame) -> dict[str, Any]:
        described = {**data.describe(table.assign(**{data.LABEL: ""})), "labels": {}}
        words = table[data.LABEL].str.split().map(len)
        described["response_words"] = {
            "mean": round(float(words.mean()), 2) if len(words) else 0.0,
            "median": round(float(words.median()), 2) if len(words) else 0.0,
            "max": int(words.max()) if len(words) else 0,
        }
        return described

    def strata(self, table: pd.DataFrame) -> pd.Series:
        return pd.Series("all", index=table.index)  # nothing to balance: a plain seeded shuffle


def with_inputs(raw: pd.DataFrame, path: Path, params: IngestParams) -> pd.DataFrame:
    """The text column with `ingest.input_column` appended after a blank line where both have text (an
    instruction without input is the whole prompt; a record without an instruction is dropped later)."""
    text_column, input_column = str(params.text_column), str(params.input_column)
    data.require_columns(raw, path, text_column, input_column)

    def present(value: Any) -> bool:
        return not data.is_missing(value) and bool(str(value).strip())

    def joined(text: Any, extra: Any) -> Any:
        return f"{str(text).strip()}{INPUT_SEPARATOR}{str(extra).strip()}" if present(text) and present(extra) else text

    return raw.assign(**{text_column: [joined(t, e) for t, e in zip(raw[text_column], raw[input_column])]})


def chats(
    raw: pd.DataFrame, path: Path, where: str, params: IngestParams
) -> tuple[pd.DataFrame, IngestParams, dict[str, Any]]:
    """Chats ([{role, content}, ...]: an optional system message, then user and assistant in turn, ending
    with the assistant's reply) as the last user message, the reply learnt, and the history before them
    (prompting.History as JSON, whose replies are learnt too unless `tokenize.prompt.learn_earlier_replies`
    is false); and the params that read them. A chat of any other shape stops with its line or row and its
    roles, or with `ingest.bad_rows: drop` is dropped, counted (`bad_chat`) and listed by its line."""
    column = str(params.messages_column)
    data.require_columns(raw, path, column)
    texts, responses, histories, bad = [], [], [], []
    for row, chat in zip(raw[data.SOURCE_ROW], raw[column]):
        problem = chat_problem(chat, column)
        if problem is not None and params.bad_rows == "stop":
            raise PipelineError(f"{path}: {where} {row}: {problem}")
        if problem is not None:
            bad.append(row)
            texts.append(None)
            responses.append(None)
            histories.append(None)
            continue
        turns = list(chat)
        has_system = turns[0]["role"] == "system"
        said = turns[1:] if has_system else turns
        earlier = [Demonstration(u["content"] or "", a["content"] or "") for u, a in zip(said[:-2:2], said[1:-2:2])]
        texts.append(said[-2]["content"])
        responses.append(said[-1]["content"])
        histories.append(History(turns[0]["content"] if has_system else None, tuple(earlier)).to_json())
    read = raw.assign(**{CHAT_TEXT: texts, CHAT_RESPONSE: responses, CHAT_HISTORY: histories})
    lines = [f"{path.name}:{where} {row}" for row in bad]
    counted = {"dropped": {"bad_chat": len(bad)}, "dropped_rows": {"bad_chat": lines}}
    return read[~read[data.SOURCE_ROW].isin(bad)], params.model_copy(update=CHAT_COLUMNS), counted


def chat_problem(chat: Any, column: str) -> str | None:
    """What is wrong with one chat cell, or None for a chat of the shape `chats` reads."""
    # JSON Lines give lists, Parquet and datasets numpy arrays of dicts.
    turns = list(chat) if isinstance(chat, (list, tuple, np.ndarray)) else None
    if turns is None or not all(
        isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), (str, type(None)))
        for t in turns
    ):
        return f"column '{column}' is not a list of {{role, content}} messages"
    roles = [t["role"] for t in turns]
    said = roles[1:] if roles[:1] == ["system"] else roles
    if not said or said != ["user", "assistant"] * (len(said) // 2):
        return (
            f"column '{column}': expected an optional system message, then user and assistant messages in turn, "
            f"ending with the assistant's reply (got roles {roles})"
        )
    return None
