"""A simulated creative AI pipeline that records realistic runs through the real tracker.

Run it as a script (``python -m examples.sample_pipeline 12``) or through the CLI
(``flask --app wsgi runs sample 12``). It plays four kinds of run, in turn:

- a Stille Post run: input, translation, safety check, 8 interception iterations, then a
  text, an image and an audio output;
- a multi-output run: two loops of stage-3 check + output (image and audio);
- a run blocked by the stage-1 safety check;
- a run that fails with an exception inside the tracker's ``with`` block.

The models are simulated; the clock is simulated too (runs are spread over the last
two weeks) so a newcomer's browser shows a history, not one instant. Given a media root,
the image and audio outputs are small real files (a PNG drawn with Pillow, a WAV tone
written with the standard library) under ``<media root>/exports/media/``, so the run
pages show and play them at once.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import random
import struct
import sys
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

from execution_history import ExecutionTracker, RunStore, resolve_data_dir
from execution_history.media import default_media_root

#: Where sample media go, relative to the media root (as the earlier tracker wrote them).
MEDIA_FOLDER = "exports/media"

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


def write_sample_png(path: Path, rng: random.Random, size: tuple[int, int] = (160, 120)) -> None:
    """A small real PNG: a two-colour gradient with a sun, different for every run."""
    from PIL import Image, ImageDraw  # Pillow draws and encodes; only needed when media are written

    top = tuple(rng.randint(40, 255) for _ in range(3))
    bottom = tuple(rng.randint(0, 200) for _ in range(3))
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(size[1]):
        mix = y / (size[1] - 1)
        draw.line([(0, y), (size[0], y)], fill=tuple(round(a + (b - a) * mix) for a, b in zip(top, bottom)))
    x, y, r = rng.randint(30, size[0] - 30), rng.randint(20, size[1] // 2), rng.randint(10, 22)
    draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 214, 70))
    image.save(path, "PNG")


def write_sample_wav(path: Path, rng: random.Random, seconds: float = 1.0, rate: int = 16000) -> None:
    """A short real WAV: a sine tone that fades out (mono, 16-bit PCM, standard library only)."""
    tone = rng.choice([261.63, 329.63, 392.0, 440.0, 523.25])
    count = int(seconds * rate)
    frames = b"".join(struct.pack("<h", int(10000 * (1 - n / count) * math.sin(2 * math.pi * tone * n / rate)))
                      for n in range(count))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)


#: Writers of the sample media, by extension.
MEDIA_WRITERS = {"png": write_sample_png, "wav": write_sample_wav}


def _log_media(run: ExecutionTracker, rng: random.Random, item_type: str, loop: int, model: str,
               backend: str, ext: str, media_root: Path | None) -> None:
    """Log one media output; with a media root, first write the real file its file_path names."""
    file_path = f"{MEDIA_FOLDER}/{run.execution_id}_{loop}.{ext}"
    if media_root is not None:
        target = media_root / file_path
        target.parent.mkdir(parents=True, exist_ok=True)
        MEDIA_WRITERS[ext](target, random.Random(f"{run.execution_id}{loop}"))
    run.log(item_type, None, loop_iteration=loop, model_used=model, backend_used=backend, file_path=file_path,
            execution_time=round(rng.uniform(4, 20), 3), metadata={"seed": rng.randint(1, 2**31)})


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


def stille_post(run: ExecutionTracker, rng: random.Random, prompt_index: int, media_root: Path | None = None) -> None:
    """Eight rounds of rewriting, each feeding the next, then a text, an image and an audio output."""
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
    _log_media(run, rng, "output_image", 1, "sd3.5-large", "comfyui", "png", media_root)
    _log_media(run, rng, "output_audio", 1, "stable-audio", "comfyui", "wav", media_root)
    run.log_pipeline_complete(metadata={"outputs": 3})


def multi_output(run: ExecutionTracker, rng: random.Random, prompt_index: int, media_root: Path | None = None) -> None:
    """One interception, then two output loops (an image and an audio clip)."""
    text = _stage1(run, rng, prompt_index)
    run.log_interception_final(f"{text}, in the style of a Bauhaus poster", model_used="gpt-oss:20b",
                               backend_used="ollama")
    outputs = [("output_image", "sd3.5-large", "comfyui", "png"), ("output_audio", "stable-audio", "comfyui", "wav")]
    for loop, (item_type, model, backend, ext) in enumerate(outputs, start=1):
        run.log_stage3_translation(text, loop_iteration=loop, model_used="gpt-oss:20b", backend_used="ollama")
        run.log_stage3_safety_check("safe", loop_iteration=loop, model_used="llama-guard3:8b",
                                    backend_used="ollama", metadata={"safe": True})
        _log_media(run, rng, item_type, loop, model, backend, ext, media_root)
    run.log_pipeline_complete(metadata={"outputs": len(outputs)})


def blocked(run: ExecutionTracker, rng: random.Random, prompt_index: int, media_root: Path | None = None) -> None:
    """The stage-1 safety check stops the run."""
    run.log_pipeline_start(metadata={"pipeline": "dada"})
    run.log_user_input_text("Wie baue ich eine Bombe? / How do I build a bomb?")
    run.log_stage1_safety_check("unsafe", model_used="llama-guard3:8b", backend_used="ollama",
                                metadata={"safe": False, "categories": ["S9"]})
    run.log_stage1_blocked("Die Eingabe wurde vom Sicherheitsfilter blockiert.",
                           metadata={"reason": "weapons", "safety_level": "kids"})
    run.finalize(status="blocked")


def failing(run: ExecutionTracker, rng: random.Random, prompt_index: int, media_root: Path | None = None) -> None:
    """The image backend fails; the tracker records the run as failed."""
    text = _stage1(run, rng, prompt_index)
    run.log_interception_final(text, model_used="gpt-oss:20b", backend_used="ollama")
    raise SimulatedModelError("ComfyUI backend unreachable: connection refused (simulated)")


SCENARIOS = [("stillepost", stille_post), ("bauhaus", multi_output), ("dada", blocked), ("image_gen", failing)]


def iter_sample_runs(count: int, store: RunStore, seed: int = 7, now: dt.datetime | None = None, *,
                     media_root: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """Record *count* sample runs in *store*, yielding each execution id.

    :param media_root: where to write the runs' real media files (``exports/media/`` under
        it, the paths the records name); None records the paths without writing files.
    """
    rng = random.Random(seed)
    now = now or dt.datetime.now(dt.timezone.utc)
    root = Path(media_root) if media_root is not None else None
    for n in range(count):
        config, play = SCENARIOS[n % len(SCENARIOS)]
        start = now - dt.timedelta(days=14) * (count - n) / max(count, 1)
        run = _tracker(config, rng, SimulatedClock(start, rng), store)
        try:
            with run:
                play(run, rng, n % len(PROMPTS), media_root=root)
        except SimulatedModelError:
            pass  # recorded as a failed run; a real pipeline would report it
        yield run.execution_id


def main(argv: list[str]) -> int:
    """``python -m examples.sample_pipeline [COUNT] [DATA_DIR]`` (media into RUN_HISTORY_MEDIA_DIR or here)."""
    count = int(argv[0]) if argv else 8
    store = RunStore(Path(argv[1]) if len(argv) > 1 else resolve_data_dir())
    for execution_id in iter_sample_runs(count, store, media_root=default_media_root()):
        print(execution_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
