"""The item-type taxonomy: every item type a run can hold, with its stage and meaning."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TAXONOMY_VERSION = "1.1"
#: What a record file without a ``taxonomy_version`` was written with (the earlier tracker).
LEGACY_TAXONOMY_VERSION = "1.0"

#: Which iteration counter an item type carries: the recursive stage's (Stille Post
#: rounds), the multi-output loop's (stages 3-4), or none.
Iteration = Literal["stage", "loop"] | None


@dataclass(frozen=True)
class ItemType:
    """One taxonomy entry: its wire name, pipeline stage and a one-line description."""

    name: str
    stage: int
    description: str
    iteration: Iteration = None


_TYPES = [
    # Stage 0: the run as a whole.
    ItemType("pipeline_start", 0, "The run began; metadata holds the pipeline's parameters."),
    ItemType("config_loaded", 0, "The pipeline configuration that was resolved for this run."),
    ItemType("pipeline_warning", 0, "Something went wrong but the run carried on."),
    ItemType("pipeline_error", 0, "An exception stopped the run; metadata holds its type and message."),
    ItemType("pipeline_complete", 0, "The run finished; metadata holds its summary."),
    ItemType("stage_transition", 0, "The pipeline moved on; stage is the one it left, metadata from_stage and to_stage."),
    # Stage 1: input, translation and the first safety gate.
    ItemType("user_input_text", 1, "The text the user typed."),
    ItemType("user_input_image", 1, "An image the user uploaded (file_path)."),
    ItemType("user_input_audio", 1, "An audio clip the user recorded or uploaded (file_path)."),
    ItemType("language_detection", 1, "The language detected in the user's input."),
    ItemType("translation_result", 1, "The input translated for the pipeline's models."),
    ItemType("stage1_safety_check", 1, "The result of the input safety check."),
    ItemType("stage1_safety_check_image", 1, "The result of the safety check of an input image."),
    ItemType("stage1_blocked", 1, "The input safety check stopped the run."),
    # Stage 2: interception, the creative rewriting (recursive for Stille Post).
    ItemType("interception_iteration", 2, "One round of recursive rewriting (Stille Post 1..n).", "stage"),
    ItemType("interception_final", 2, "The text that interception hands on to the outputs."),
    ItemType("prompt_optimization", 2, "The prompt rewritten for a media model."),
    # Stage 3: per output, translation and the second safety gate.
    ItemType("stage3_translation", 3, "The prompt translated for one output's model.", "loop"),
    ItemType("stage3_safety_check", 3, "The result of the pre-output safety check.", "loop"),
    ItemType("stage3_blocked", 3, "The pre-output safety check stopped this output.", "loop"),
    # Stage 4: what the models produced.
    ItemType("output_text", 4, "Generated text.", "loop"),
    ItemType("output_image", 4, "A generated image (file_path).", "loop"),
    ItemType("output_audio", 4, "Generated audio (file_path).", "loop"),
    ItemType("output_video", 4, "A generated video (file_path).", "loop"),
    ItemType("output_music", 4, "Generated music (file_path).", "loop"),
    ItemType("output_3d", 4, "A generated 3D model (file_path).", "loop"),
]

#: name -> ItemType, in pipeline order.
TAXONOMY: dict[str, ItemType] = {t.name: t for t in _TYPES}

#: Stages an item may carry, and what each stage is.
STAGES = range(0, 5)
#: Stages a stored item may carry: the earlier tracker logged ``pipeline_complete`` at stage 5.
RECORD_STAGES = range(0, 6)
STAGE_NAMES = {0: "Run", 1: "Input and safety check", 2: "Interception", 3: "Output preparation and safety check",
               4: "Output", 5: "Run complete (earlier tracker)"}

#: ``media_type`` of the item types that carry text (API.md 1b); media types follow the name's suffix.
_TEXT_TYPES = frozenset({"user_input_text", "translation_result", "interception_iteration", "interception_final",
                         "prompt_optimization", "stage3_translation", "output_text"})
_MEDIA_SUFFIXES = (("_image", "image"), ("_audio", "audio"), ("_music", "music"), ("_video", "video"),
                   ("_3d", "3d"))


def media_type_of(item_type: str) -> str:
    """The ``media_type`` an item of *item_type* carries: text, image, audio, music, video, 3d or metadata."""
    if item_type in _TEXT_TYPES or item_type.startswith("interception_"):
        return "text"
    for suffix, media_type in _MEDIA_SUFFIXES:
        if item_type.endswith(suffix):
            return media_type
    return "metadata"
