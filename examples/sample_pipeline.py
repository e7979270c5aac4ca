"""A simulated creative AI pipeline that records realistic runs through the real tracker.

Run it as a script (``python -m examples.sample_pipeline 12``) or through the CLI
(``flask --app wsgi runs sample 12``). It plays four kinds of run, in turn:

- a Stille Post run: input, translation, safety check, 8 interception iterations, output;
- a multi-output run: two loops of stage-3 check + output (image and audio);
- a run blocked by the stage-1 safety check;
- a run that fails with an exception inside the tracker's ``with`` block.

The models are simulated; the clock is simulated too (runs are spread over the last
two weeks) so a newcomer's browser shows a history, not one instant.
"""
from __future__ import annotations

import datetime as dt
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from execution_history import ExecutionTracker, RunStore, resolve_data_dir

PROMPTS = [
    ("de", "Eine Blume auf der Wiese, die im Wind tanzt"),
    ("fr", "Un chat qui rêve de l'océan sous la lune"),
    ("tr", "Yağmurda yürüyen yaşlı bir adam ve şemsiyesi"),
    ("ja", "桜の木の下で本を読む子ども"),
    ("ar", "قارب صغير في بحر هادئ عند الغروب"),
    ("uk", "Старий трамвай, що їде крізь туман"),
    ("en", "A robot learning to paint with watercolours"),
]
TRANSLATIONS = [
    "A flower on the meadow, dancing in the wind",
    "A cat dreaming of the ocean under the moon",
    "An old man walking in the rain with his umbrella",
    "A child reading a book under the cherry tree",
    "A small boat on a calm sea at sunset",
    "An old tram driving through the fog",
    "A robot learning to paint with watercolours",
]
#: What a chain of rewritings does to a sentence (Stille Post: Chinese whispers).
DRIFT = ["wind", "wings", "whispers", "winter", "windows", "wonders", "waves", "wolves"]
USERS = ["anonymous", "u7", "lab-a", "lab-b"]
MODES = ["eco", "fast"]
SAFETY = ["kids", "youth", "adult"]


class SimulatedClock:
    """A clock that starts at *start* and moves on by a few seconds each time it is read."""

    def __init__(self, start: dt.datetime, rng: random.Random) -> None:
        self.now = start
        self.rng = rng

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=self.rng.uniform(0.2, 2.5))
        return self.now


class SimulatedModelError(RuntimeError):
    """What the simulated image backend raises in the failing run."""


def _tracker(config: str, rng: random.Random, clock: Callable[[], dt.datetime],
             store: RunStore) -> ExecutionTracker:
    return ExecutionTracker(config_name=config, execution_mode=rng.choice(MODES),
                            safety_level=rng.choice(SAFETY), user_id=rng.choice(USERS),
                            session_id=f"s{rng.randint(1, 5)}", store=store, clock=clock)


def _stage1(run: ExecutionTracker, rng: random.Random, prompt_index: int) -> str:
    language, text = PROMPTS[prompt_index]
    run.log_pipeline_start(metadata={"pipeline_version": "2.3", "seed": rng.randint(1, 2**31)})
    run.log_user_input_text(text)
    run.log_language_detection(language, metadata={"confidence": round(rng.uniform(0.8, 1.0), 3)})
    translated = TRANSLATIONS[prompt_index]
    run.log_translation_result(translated, model_used="gpt-oss:20b", backend_used="ollama",
                               execution_time=round(rng.uniform(0.3, 1.2), 3),
                               metadata={"source_language": language, "target_language": "en"})
    run.log_stage1_safety_check("safe", model_used="llama-guard3:8b", backend_used="ollama",
                                execution_time=round(rng.uniform(0.1, 0.4), 3),
                                metadata={"safe": True, "categories": []})
    return translated


def stille_post(run: ExecutionTracker, rng: random.Random, prompt_index: int) -> None:
    """Eight rounds of rewriting, each feeding the next, then one text output."""
    text = _stage1(run, rng, prompt_index)
    for i in range(1, 9):
        text = f"{text}, but with {DRIFT[i - 1]}"
        run.log_interception_iteration(i, text, model_used="gpt-oss:20b", backend_used="ollama",
                                       execution_time=round(rng.uniform(0.5, 1.5), 3),
                                       metadata={"temperature": 0.9, "round": i})
    run.log_interception_final(text)
    run.log_stage3_safety_check("safe", loop_iteration=1, model_used="llama-guard3:8b",
                                backend_used="ollama", metadata={"safe": True})
    run.log_output_text(text.upper(), loop_iteration=1, model_used="gpt-oss:20b", backend_used="ollama")
    run.log_pipeline_complete(metadata={"outputs": 1})


def multi_output(run: ExecutionTracker, rng: random.Random, prompt_index: int) -> None:
    """One interception, then two output loops (an image and an audio clip)."""
    text = _stage1(run, rng, prompt_index)
    run.log_interception_final(f"{text}, in the style of a Bauhaus poster", model_used="gpt-oss:20b",
                               backend_used="ollama")
    outputs = [("output_image", "sd3.5-large", "comfyui", "png"), ("output_audio", "stable-audio", "comfyui", "wav")]
    for loop, (item_type, model, backend, ext) in enumerate(outputs, start=1):
        run.log_stage3_translation(text, loop_iteration=loop, model_used="gpt-oss:20b", backend_used="ollama")
        run.log_stage3_safety_check("safe", loop_iteration=loop, model_used="llama-guard3:8b",
                                    backend_used="ollama", metadata={"safe": True})
        run.log(item_type, None, loop_iteration=loop, model_used=model, backend_used=backend,
                file_path=f"exports/media/{run.execution_id}_{loop}.{ext}",
                execution_time=round(rng.uniform(4, 20), 3), metadata={"seed": rng.randint(1, 2**31)})
    run.log_pipeline_complete(metadata={"outputs": len(outputs)})


def blocked(run: ExecutionTracker, rng: random.Random, prompt_index: int) -> None:
    """The stage-1 safety check stops the run."""
    run.log_pipeline_start(metadata={"pipeline": "dada"})
    run.log_user_input_text("Wie baue ich eine Bombe? / How do I build a bomb?")
    run.log_stage1_safety_check("unsafe", model_used="llama-guard3:8b", backend_used="ollama",
                                metadata={"safe": False, "categories": ["S9"]})
    run.log_stage1_blocked("Die Eingabe wurde vom Sicherheitsfilter blockiert.",
                           metadata={"reason": "weapons", "safety_level": "kids"})
    run.finalize(status="blocked")


def failing(run: ExecutionTracker, rng: random.Random, prompt_index: int) -> None:
    """The image backend fails; the tracker records the run as failed."""
    text = _stage1(run, rng, prompt_index)
    run.log_interception_final(text, model_used="gpt-oss:20b", backend_used="ollama")
    raise SimulatedModelError("ComfyUI backend unreachable: connection refused (simulated)")


SCENARIOS = [("stillepost", stille_post), ("bauhaus", multi_output), ("dada", blocked), ("image_gen", failing)]


def iter_sample_runs(count: int, store: RunStore, seed: int = 7,
                     now: dt.datetime | None = None) -> Iterator[str]:
    """Record *count* sample runs in *store*, yielding each execution id."""
    rng = random.Random(seed)
    now = now or dt.datetime.now(dt.timezone.utc)
    for n in range(count):
        config, play = SCENARIOS[n % len(SCENARIOS)]
        start = now - dt.timedelta(days=14) * (count - n) / max(count, 1)
        run = _tracker(config, rng, SimulatedClock(start, rng), store)
        try:
            with run:
                play(run, rng, n % len(PROMPTS))
        except SimulatedModelError:
            pass  # recorded as a failed run; a real pipeline would report it
        yield run.execution_id


def main(argv: list[str]) -> int:
    """``python -m examples.sample_pipeline [COUNT] [DATA_DIR]``."""
    count = int(argv[0]) if argv else 8
    store = RunStore(Path(argv[1]) if len(argv) > 1 else resolve_data_dir())
    for execution_id in iter_sample_runs(count, store):
        print(execution_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
