"""The peft adapters: `lora`, `adalora`, `prefix` and `ia3`. peft wraps the model, trains the adapter and
the task head (`modules_to_save`, from the task's peft TaskType) and saves them. An adapter model folder
holds the adapter, the task config and a `base/` copy of the pretrained encoder, so it loads with no access
to the source it came from (base.load)."""

from __future__ import annotations

import inspect
import shutil
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from transformers import TrainerCallback

from pipeline.errors import PipelineError
from pipeline.methods.base import BASE_DIR, Method, accept_past_key_values, prefix_generates
from pipeline.methods.specs import AdaLoraSpec, DoraSpec, IA3Spec, LoraSpec, PrefixSpec
from pipeline.schema import FinetuneParams


class PeftAdapter(Method):
    """A method peft implements: its config from the method's params section, the wrapped model, and a
    folder of the adapter beside a copy of the base weights (or the merged weights, where mergeable)."""

    @abstractmethod
    def peft_config(self, params: FinetuneParams, task_type: Any, total_steps: int) -> Any:
        """peft's config from `finetune.<name>`; `task_type` is the task's peft TaskType."""

    def prepare(self, model: Any, params: FinetuneParams, peft_task_type: str, total_steps: int) -> Any:
        from peft import TaskType, get_peft_model

        config = self.peft_config(params, TaskType[peft_task_type], total_steps)
        try:
            return prefix_generates(get_peft_model(model, config))
        except ValueError as exc:  # e.g. target modules the model does not have
            raise PipelineError(f"finetune.{self.name}: {str(exc).splitlines()[0]}") from None

    def save(self, model: Any, out_dir: Path, pretrained_dir: Path, merge: bool) -> Any:
        if merge:
            merged = model.merge_and_unload()
            merged.save_pretrained(out_dir)
            return merged
        model.save_pretrained(out_dir)  # adapter weights + head (modules_to_save) + adapter_config.json
        model.get_base_model().config.save_pretrained(out_dir)  # label map and task of the head
        base = out_dir / BASE_DIR
        base.mkdir()
        for file in pretrained_dir.iterdir():  # the encoder's weights and config; tokenizer files live beside
            if file.is_file() and (
                file.suffix == ".safetensors" or file.name in ("config.json", "model.safetensors.index.json")
            ):
                shutil.copy2(file, base / file.name)
        return model


class Lora(LoraSpec, PeftAdapter):
    use_dora: ClassVar[bool] = False

    def peft_config(self, params: FinetuneParams, task_type: Any, total_steps: int) -> Any:
        from peft import LoraConfig

        lora = getattr(params, self.name)  # finetune.lora, or finetune.dora for DoRA
        return LoraConfig(
            task_type=task_type,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            use_dora=self.use_dora,
        )


class Dora(DoraSpec, Lora):
    """DoRA (Liu et al. 2024): peft's LoRA with `use_dora`, which trains a magnitude per output besides the
    low-rank direction."""

    use_dora: ClassVar[bool] = True


class AdaLoraBudget(TrainerCallback):
    """AdaLoRA reallocates its rank budget from the gradients after each optimizer step (peft leaves the
    call to the training loop; Trainer does not make it)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.model.base_model.update_and_allocate(state.global_step)


class AdaLora(AdaLoraSpec, PeftAdapter):
    def peft_config(self, params: FinetuneParams, task_type: Any, total_steps: int) -> Any:
        from peft import AdaLoraConfig

        ada = params.adalora
        # Shares of the run -> steps; tinit + tfinal < 1 (checked in params) leaves at least one pruning step.
        tinit, tfinal = int(ada.tinit * total_steps), int(ada.tfinal * total_steps)
        return AdaLoraConfig(
            task_type=task_type,
            init_r=ada.init_r,
            target_r=ada.target_r,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=ada.delta_t,
            total_step=total_steps,
            lora_alpha=ada.alpha,
            lora_dropout=ada.dropout,
            target_modules=ada.target_modules,
        )

    def callbacks(self, model: Any) -> list[TrainerCallback]:
        return [AdaLoraBudget(model)]


class Prefix(PrefixSpec, PeftAdapter):
    def peft_config(self, params: FinetuneParams, task_type: Any, total_steps: int) -> Any:
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(
            task_type=task_type,
            num_virtual_tokens=params.prefix.num_virtual_tokens,
            prefix_projection=params.prefix.projection,
        )

    def prepare(self, model: Any, params: FinetuneParams, peft_task_type: str, total_steps: int) -> Any:
        if "past_key_values" not in inspect.signature(model.forward).parameters:
            accept_past_key_values(model)
        return super().prepare(model, params, peft_task_type, total_steps)


class IA3(IA3Spec, PeftAdapter):
    def peft_config(self, params: FinetuneParams, task_type: Any, total_steps: int) -> Any:
        from peft import IA3Config

        return IA3Config(
            task_type=task_type,
            target_modules=params.ia3.target_modules,
            feedforward_modules=params.ia3.feedforward_modules,
        )
