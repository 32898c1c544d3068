"""ONNX Runtime copies of a fine-tuned model: fp32 and dynamic int8, exported by the `export` stage.

Only the forward pass changes between runtimes: the Predictor tokenises, windows, pads and decodes the
same way whichever runs the model, so a runtime is chosen by name (`torch`, `onnx`, `onnx-int8`) and
predictions differ only by the runtime's numerics.

The export uses torch's own exporter (`torch.onnx.export(dynamo=True)`, onnxscript) and onnxruntime's
dynamic quantisation (weights int8, activations quantised per batch at run time): no calibration data,
and the best fit for transformer encoders on CPUs. optimum would wrap the same two calls but pins
transformers < 5.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError

TORCH = "torch"
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}  # runtime -> file in the export folder
RUNTIMES = (TORCH, *ONNX_FILES)
EXPORT_CARD = "export.json"  # what was exported, from which model, and its parity with PyTorch
INPUTS = ("input_ids", "attention_mask")  # what the Predictor feeds every runtime (tokenizer.pad's keys)


class OnnxSession:
    """An ONNX Runtime session that maps padded (input_ids, attention_mask) to logits, as the model does."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        if not path.is_file():
            raise PipelineError(f"{path}: no ONNX model (the export stage writes it: dvc repro export)")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings would precede a stage's one-line output
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable graphs
            raise PipelineError(f"{path}: cannot load the ONNX model: {str(exc).splitlines()[0]}") from None

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        return self.session.run(["logits"], feed)[0]


def exportable(model: Any) -> Any:
    """The model as one plain module: adapters that fold into the weights (LoRA, AdaLoRA, IA3) are merged;
    prefix tuning, which feeds extra keys and values to every layer, has no single-graph form here."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    if model.peft_config["default"].peft_type.value == "PREFIX_TUNING":
        raise PipelineError("a prefix-tuning adapter does not merge into the weights; PyTorch serves it")
    return model.merge_and_unload()


def export_onnx(model: Any, tokenizer: Any, target: Path, opset: int) -> None:
    """Trace `model` with dynamic batch and sequence axes and write it to `target`."""
    import torch

    # Two inputs of different lengths: batch and sequence sizes stay symbolic instead of being specialised.
    example = tokenizer(
        ["a short text", "a somewhat longer text for the sequence axis"], padding=True, return_tensors="pt"
    )
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    # A decoder's classifier would also return its key/value cache, which torch.export cannot trace, and
    # the graph serves one forward pass: no cache (encoders ignore the setting).
    model.config.use_cache = False
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # It warns that the two inputs share their axes' names: they do, by design.
        warnings.filterwarnings("ignore", message="# The axis name")
        program = torch.onnx.export(
            model.eval(),
            # By name: a forward's second positional parameter is not always the mask (GPT-2's is its cache).
            (),
            kwargs={name: example[name] for name in INPUTS},
            input_names=list(INPUTS),
            output_names=["logits"],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUTS},
            opset_version=opset,
            dynamo=True,
            verbose=False,
            optimize=True,
        )
    if not any(getattr(module, "is_causal", False) for module in model.modules()):
        fuse_for_onnxruntime(program.model)
    program.save(str(target), external_data=False)


def fuse_for_onnxruntime(model: Any) -> None:
    """Rewrite the exported graph of a bidirectional encoder (an onnx_ir model, in place) into onnxruntime's
    fused attention: one Attention node a layer, QAttention once quantised (onnxscript's ORT fusions, made
    for dynamo graphs; onnxruntime's own transformer optimiser expects TorchScript graphs and finds no
    attention here). Patterns that do not match stay as exported: the export stage's parity check holds
    either way.

    Measured on the default model of 2026-12-05 (Intel Xeon, 2 cores, ONNX Runtime alone, batches of 32 of
    the test split, fastest of 3 passes, one run): int8 as exported 839 samples/s, single-text p50 2.03 ms;
    every fusion 1,025 and 1.63 ms; every fusion but SkipLayerNormalization (below) 1,360 and 1.40 ms.
    """
    import onnxscript.optimizer
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    optimize_for_ort(model)
    # The fused Attention reads its query, key and value weights packed by a Concat of the three; the
    # optimiser's default size limits leave that unfolded, and onnxruntime's quantiser makes QAttention only
    # of a weight that is one initializer.
    onnxscript.optimizer.optimize(model, input_size_limit=2**30, output_size_limit=2**30)
    _attention_reads_the_padding_mask(model)
    _attention_states_no_default_split(model)
    _unfuse_skip_layer_norms(model)
    onnxscript.optimizer.optimize(model)  # drops what the two rewrites left unused


def _attention_reads_the_padding_mask(model: Any) -> None:
    """The fusion passes the padding mask to Attention as an additive attention_bias (input 5), which
    QAttention lacks: onnxruntime's quantiser drops it, and the int8 graph attends to padding. Attention and
    QAttention both take the raw (batch, sequence) mask as mask_index (input 3) instead; a bidirectional
    encoder's bias is that mask alone."""
    import onnx_ir as ir

    mask = next(value for value in model.graph.inputs if value.name == "attention_mask")
    mask_index = None
    for node in list(model.graph):
        if node.op_type != "Attention" or len(node.inputs) < 6:
            continue
        if mask_index is None:
            cast = ir.node("Cast", [mask], attributes={"to": ir.DataType.INT32}, name="attention_mask_index")
            model.graph.insert_before(node, cast)
            mask_index = cast.outputs[0]
        node.replace_input_with(3, mask_index)
        node.replace_input_with(5, None)


def _attention_states_no_default_split(model: Any) -> None:
    """Equal query, key and value sizes are Attention's default split; the quantiser leaves any Attention
    that states them (qkv_hidden_sizes) in fp32, since QAttention has no such attribute."""
    for node in model.graph:
        sizes = node.attributes.get("qkv_hidden_sizes") if node.op_type == "Attention" else None
        if sizes is not None and len(set(sizes.as_ints())) == 1:
            del node.attributes["qkv_hidden_sizes"]


def _unfuse_skip_layer_norms(model: Any) -> None:
    """SkipLayerNormalization back to Add (+ Add of its bias) and LayerNormalization: onnxruntime 1.32's CPU
    kernel for it took 0.92-1.05 ms on a (32, 30, 384) batch where the three standard ops took 0.26-0.32
    ms (same machine, same run), 27 % of the int8 model's time. onnxscript fuses it with the attention
    fusions it needs and has no switch to leave it out."""
    import onnx_ir as ir

    for node in list(model.graph):
        if node.op_type != "SkipLayerNormalization" or node.outputs[0].is_graph_output():
            continue
        if any(output.uses() or output.is_graph_output() for output in node.outputs[1:]):
            continue  # its mean, inverse deviation or sum is read: left fused
        x, skip, gamma, beta, bias = [*node.inputs, None, None][:5]
        nodes = [ir.node("Add", [x, skip])]
        if bias is not None:
            nodes.append(ir.node("Add", [nodes[-1].outputs[0], bias]))
        epsilon = node.attributes.get_float("epsilon", 1e-12)  # the contrib op's default
        nodes.append(
            ir.node("LayerNormalization", [nodes[-1].outputs[0], gamma, beta], attributes={"epsilon": epsilon})
        )
        model.graph.insert_before(node, nodes)
        ir.convenience.replace_all_uses_with(node.outputs[0], nodes[-1].outputs[0])
        model.graph.remove(node, safe=True)


def quantize_int8(fp32: Path, target: Path) -> None:
    """Dynamic int8 quantisation of an exported graph.

    The dynamo exporter leaves `value_info` shape annotations that go stale once its optimiser rewrites
    the graph; onnxruntime's quantiser runs ONNX shape inference first and fails on them ("Inferred shape
    and existing shape differ"). They are only hints, so the graph is quantised without them.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32))
    del graph.graph.value_info[:]
    cleaned = target.with_name(target.stem + ".noinfo.onnx")
    onnx.save(graph, str(cleaned))
    # The quantiser logs a generic "consider pre-processing" warning on the root logger every time.
    logging.disable(logging.WARNING)
    try:
        # One scale per output channel: on the default model the int8 decisions then agree with fp32 on 98.4%
        # of the test texts instead of 94.5% with one scale per matrix, at the same speed. Only the matrix
        # products, the fused attention's included: the quantiser's default also stores the word embeddings
        # (a lookup, no arithmetic to speed up) in int8, which cost the default model of 2026-12-05 1.04
        # points of test accuracy in evaluate (+0.09 without), at the same speed, for 34 MiB less on disk.
        quantize_dynamic(
            str(cleaned),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm", "Attention"],
            # Shape inference knows no types past onnxruntime's fused (com.microsoft) nodes; every tensor
            # the quantiser meets there is float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        logging.disable(logging.NOTSET)
        cleaned.unlink(missing_ok=True)


def read_export_card(folder: Path) -> dict[str, Any]:
    file = folder / EXPORT_CARD
    if not file.is_file():
        raise PipelineError(f"{file}: not found (the export stage writes it: dvc repro export)")
    return json.loads(file.read_text(encoding="utf-8"))


def machine() -> dict[str, Any]:
    """What timings depend on: CPU model, cores, the vector ISA int8 kernels use, load, library versions."""
    from importlib.metadata import version

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), []))
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "isa": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags],
        "load_average_1m": round(os.getloadavg()[0], 2),
        "versions": {name: version(name).split("+")[0] for name in ("torch", "onnxruntime", "transformers")},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def timed_outcomes(
    predictor: Any, table: pd.DataFrame, source: str, single: int = 100, passes: int = 3
) -> tuple[Any, dict]:
    """The task's outcomes on `table` at the predictor's batch size, timed (encode, forward, decode:
    samples/s) by the fastest of `passes` passes after a warm-up batch, as timeit does: a pass slowed by
    another process says nothing of the runtime, and one pass per runtime moved the int8/PyTorch ratio by
    up to 0.5 between runs of the same model. Then p50/p95 latency of one example at a time over the first
    `single` rows."""
    task = predictor.task
    task.outcomes(predictor, table.head(predictor.batch_size), "warm-up")
    seconds = []
    for _ in range(passes):
        started = time.perf_counter()
        result = task.outcomes(predictor, table, source)
        seconds.append(time.perf_counter() - started)
    throughput = len(table) / min(seconds)
    latencies = []
    for index in range(min(single, len(table))):
        started = time.perf_counter()
        task.outcomes(predictor, table.iloc[[index]], source)
        latencies.append(time.perf_counter() - started)
    return result, {
        "samples_per_second": round(throughput, 1),
        "latency_p50_ms": round(1000 * float(np.percentile(latencies, 50)), 2),
        "latency_p95_ms": round(1000 * float(np.percentile(latencies, 95)), 2),
    }
