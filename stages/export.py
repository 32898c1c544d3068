"""Stage: the fine-tuned model as ONNX Runtime graphs, fp32 and dynamic int8 (pipeline/prediction/runtimes.py).

Parity is checked here, on the validation split as the tokenize stage encoded it: the fp32 graph must give
PyTorch's logits (a larger gap is an export bug and stops the stage); for int8, the largest logit gap and
the share of argmax decisions that agree are recorded. A model that cannot be exported (a prefix-tuning
adapter) gets an export card that says why, and is served by PyTorch.
"""

from __future__ import annotations

import numpy as np

from pipeline import data, paths
from pipeline.card import ModelCard
from pipeline.data.sources import tree_sha256
from pipeline.errors import PipelineError, atomic_dir, stage_main
from pipeline.methods.base import load_model
from pipeline.params import load_params
from pipeline.prediction.inference import Predictor
from pipeline.prediction.runtimes import EXPORT_CARD, ONNX_FILES, export_onnx, exportable, quantize_int8

PROBE = 128  # validation inputs compared across runtimes
FP32_TOLERANCE = 1e-3  # fp32 graphs agree with eager PyTorch to ~1e-5; beyond this the graph is wrong


def parity(reference: Predictor, exported: Predictor, encoded: list[list[int]]) -> dict[str, float]:
    """Largest absolute logit gap and agreement of the decisions (argmax over labels) on `encoded`."""
    ours = reference.forward(encoded)
    theirs = exported.forward(encoded)
    gap = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs))
    agree = np.mean([np.array_equal(a.argmax(-1), b.argmax(-1)) for a, b in zip(ours, theirs)])
    return {"max_abs_logit_diff": gap, "decision_agreement": float(agree)}


@stage_main
def main() -> None:
    params = load_params()
    card = ModelCard.read(paths.MODEL)
    reference = Predictor(paths.MODEL)
    encoded = data.load_tokenized(paths.TOKENIZED)["validation"]["input_ids"][:PROBE]
    record: dict = {"model_sha256": tree_sha256(paths.MODEL), "opset": params.export.opset, "runtimes": {}}
    with atomic_dir(paths.ONNX) as out:
        try:
            if reference.task.not_exportable:
                raise PipelineError(reference.task.not_exportable)
            model = exportable(load_model(paths.MODEL, reference.model_class))
        except PipelineError as exc:
            record["skipped"] = str(exc)
            print(f"export: skipped: {exc}")
        else:
            export_onnx(model, reference.tokenizer, out / ONNX_FILES["onnx"], params.export.opset)
            quantize_int8(out / ONNX_FILES["onnx"], out / ONNX_FILES["onnx-int8"])
            for runtime, file in ONNX_FILES.items():
                checked = parity(reference, Predictor(paths.MODEL, runtime=runtime, export_dir=out), encoded)
                record["runtimes"][runtime] = {"file": file, "bytes": (out / file).stat().st_size, **checked}
            fp32_gap = record["runtimes"]["onnx"]["max_abs_logit_diff"]
            if not fp32_gap <= FP32_TOLERANCE:
                raise PipelineError(f"export: the fp32 ONNX graph's logits differ from PyTorch's by {fp32_gap:.2g}")
        data.write_json(record, out / EXPORT_CARD)
    for runtime, entry in record["runtimes"].items():
        print(
            f"export: {runtime} {entry['bytes'] / 2**20:.1f} MiB, logits within {entry['max_abs_logit_diff']:.2g} "
            f"of PyTorch, decisions agree on {entry['decision_agreement']:.1%} of {len(encoded)} validation inputs "
            f"({card.task})"
        )


if __name__ == "__main__":
    main()
