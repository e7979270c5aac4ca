"""Pipeline code written for the earlier tracker (API.md 2b) runs unchanged on ExecutionTracker."""
import datetime as dt
import inspect
import json
import logging

import pytest

from execution_history import ExecutionTracker
from execution_history.legacy_calls import NEW_KEYWORDS, SHAPES

from .conftest import StepClock

START = dt.datetime(2025, 11, 3, 20, 52, 39, tzinfo=dt.timezone.utc)
#: API.md 1b, written out here (not taken from the code) so that a wrong mapping fails.
MEDIA_TYPES = {
    "pipeline_start": "metadata", "user_input_text": "text", "user_input_image": "image",
    "translation_result": "text", "stage1_safety_check": "metadata", "stage1_blocked": "metadata",
    "stage_transition": "metadata", "interception_iteration": "text", "interception_final": "text",
    "stage3_safety_check": "metadata", "stage3_blocked": "metadata", "output_image": "image",
    "output_audio": "audio", "output_music": "music", "output_video": "video", "output_3d": "3d",
    "pipeline_complete": "metadata", "pipeline_error": "metadata",
}


def item(seq, item_type, stage, content=None, *, stage_iteration=None, loop_iteration=None, file_path=None,
         model_used=None, backend_used=None, config_used=None, execution_time=None, metadata=None):
    """The item a call describes; its timestamp is the StepClock's tick *seq* (tick 0 started the run)."""
    return {"sequence_number": seq, "stage": stage, "stage_iteration": stage_iteration,
            "loop_iteration": loop_iteration, "item_type": item_type,
            "timestamp": (START + dt.timedelta(seconds=seq)).isoformat(), "content": content,
            "file_path": file_path, "model_used": model_used, "backend_used": backend_used,
            "media_type": MEDIA_TYPES[item_type], "config_used": config_used, "execution_time": execution_time,
            "metadata": metadata or {}}


def earlier_pipeline(store):
    """A Stille Post run written only with the 2b call shapes, positional and by keyword."""
    run = ExecutionTracker("stillepost", "eco", "kids", "u7", "s1", store=store, clock=StepClock(START))
    run.set_stage(0)
    run.log_pipeline_start("Eine Blume", {"pipeline_version": "2.3"})
    run.set_stage(1)
    run.log_user_input_text("Eine Blume auf der Wiese")
    run.log_user_input_image("exports/media/in.png", {"width": 512})
    run.log_translation_result("A flower on the meadow", "de", "en", "gpt-oss:20b", 0.4, backend_used="ollama")
    run.log_stage1_safety_check(True, "llm", 0.02, [], "llama-guard3:1b")
    run.log_stage_transition(1, 2)
    run.set_stage(2)
    for i in (1, 2):
        run.set_stage_iteration(i)
        run.log_interception_iteration(i, f"Runde {i}", "en", "de", "gpt-oss:20b", config_used="stillepost")
    run.set_stage_iteration(None)
    run.log_interception_final(final_text="Die Blume", total_iterations=2, config_used="stillepost",
                               model_used="gpt-oss:20b", backend_type="ollama", execution_time=1.5)
    run.log_stage_transition(from_stage=2, to_stage=3)
    run.set_stage(3)
    run.set_loop_iteration(1)
    run.log_stage3_safety_check(1, True, "llm", "sd35", model_used="llama-guard3:1b", backend_type="ollama",
                                execution_time=0.1)
    run.log_output_image(1, "sd35", "exports/media/out1.png", "sd3.5_large", "comfyui", {"seed": 42}, 12.5)
    run.log_output_audio(loop_iteration=1, config_used="stableaudio", file_path="exports/media/out1.wav",
                         model_used="stableaudio_open", backend_type="comfyui", metadata={"seconds": 8})
    run.log_output_music(1, "acestep", "exports/media/out1.mp3", "ace-step", "comfyui", {}, execution_time=30.0)
    run.set_loop_iteration(None)
    run.log_stage3_blocked(2, "sd35", "unsafe prompt")
    run.log_pipeline_complete(42.5, 3)
    run.finalize()
    return run.execution_id


def expected_earlier_items():
    return [
        item(1, "pipeline_start", 0, "Eine Blume", metadata={"pipeline_version": "2.3"}),
        item(2, "user_input_text", 1, "Eine Blume auf der Wiese"),
        item(3, "user_input_image", 1, file_path="exports/media/in.png", metadata={"width": 512}),
        item(4, "translation_result", 1, "A flower on the meadow", model_used="gpt-oss:20b", backend_used="ollama",
             execution_time=0.4, metadata={"from_lang": "de", "to_lang": "en"}),
        item(5, "stage1_safety_check", 1, model_used="llama-guard3:1b", execution_time=0.02,
             metadata={"safe": True, "method": "llm", "found_terms": []}),
        item(6, "stage_transition", 1, metadata={"from_stage": 1, "to_stage": 2}),
        item(7, "interception_iteration", 2, "Runde 1", stage_iteration=1, model_used="gpt-oss:20b",
             config_used="stillepost", metadata={"from_lang": "en", "to_lang": "de"}),
        item(8, "interception_iteration", 2, "Runde 2", stage_iteration=2, model_used="gpt-oss:20b",
             config_used="stillepost", metadata={"from_lang": "en", "to_lang": "de"}),
        item(9, "interception_final", 2, "Die Blume", model_used="gpt-oss:20b", backend_used="ollama",
             config_used="stillepost", execution_time=1.5, metadata={"total_iterations": 2}),
        item(10, "stage_transition", 2, metadata={"from_stage": 2, "to_stage": 3}),
        item(11, "stage3_safety_check", 3, loop_iteration=1, model_used="llama-guard3:1b", backend_used="ollama",
             config_used="sd35", execution_time=0.1, metadata={"safe": True, "method": "llm"}),
        item(12, "output_image", 4, loop_iteration=1, file_path="exports/media/out1.png", model_used="sd3.5_large",
             backend_used="comfyui", config_used="sd35", execution_time=12.5, metadata={"seed": 42}),
        item(13, "output_audio", 4, loop_iteration=1, file_path="exports/media/out1.wav",
             model_used="stableaudio_open", backend_used="comfyui", config_used="stableaudio",
             metadata={"seconds": 8}),
        item(14, "output_music", 4, loop_iteration=1, file_path="exports/media/out1.mp3", model_used="ace-step",
             backend_used="comfyui", config_used="acestep", execution_time=30.0),
        item(15, "stage3_blocked", 3, "unsafe prompt", loop_iteration=2, config_used="sd35"),
        item(16, "pipeline_complete", 0, metadata={"total_duration": 42.5, "outputs_generated": 3}),
    ]


@pytest.fixture
def tracker_warnings(caplog):
    caplog.set_level(logging.WARNING, logger="execution_history")
    yield lambda: [r.getMessage() for r in caplog.records
                   if r.name.startswith("execution_history") and r.levelno >= logging.WARNING]


def test_a_pipeline_written_for_the_earlier_tracker_records_what_it_says(store, tracker_warnings):
    execution_id = earlier_pipeline(store)
    assert tracker_warnings() == []
    record = store.load(execution_id)
    assert json.loads(store.path_for(execution_id).read_bytes()) == record  # nothing left to fill on read
    assert record == {
        "execution_id": execution_id, "config_name": "stillepost", "timestamp": START.isoformat(),
        "finished_at": (START + dt.timedelta(seconds=17)).isoformat(), "status": "completed",
        "execution_mode": "eco", "safety_level": "kids", "user_id": "u7", "session_id": "s1",
        "total_execution_time": 17.0, "taxonomy_version": "1.1", "items": expected_earlier_items()}


def test_blocked_and_failed_earlier_runs_infer_their_status(store, tracker_warnings):
    blocked = ExecutionTracker("dada", "eco", "kids", store=store, clock=StepClock(START))
    blocked.log_user_input_text("Wie baue ich eine Bombe?")
    blocked.log_stage1_blocked("violence", ["S1", "S9"], "llama-guard3:1b", "Blocked: violence")
    blocked.finalize()
    failed = ExecutionTracker("dada", "eco", "kids", store=store, clock=StepClock(START))
    failed.log_stage1_blocked(blocked_reason="x", blocked_codes=[])
    failed.log_pipeline_error("RuntimeError", "model exploded", 2)
    failed.finalize()
    assert tracker_warnings() == []
    blocked_record, failed_record = store.load(blocked.execution_id), store.load(failed.execution_id)
    assert blocked_record["status"] == "blocked" and failed_record["status"] == "failed"
    assert blocked_record["items"][1] == item(
        2, "stage1_blocked", 1, "Blocked: violence", model_used="llama-guard3:1b",
        metadata={"blocked_reason": "violence", "blocked_codes": ["S1", "S9"]})
    assert failed_record["items"] == [
        item(1, "stage1_blocked", 1, metadata={"blocked_reason": "x", "blocked_codes": []}),
        item(2, "pipeline_error", 2, "model exploded", metadata={"error_type": "RuntimeError"})]


@pytest.mark.parametrize("logged, explicit, status", [
    ([], None, "completed"), (["stage1_blocked"], None, "blocked"),
    (["stage1_blocked", "pipeline_error"], None, "failed"), (["pipeline_error"], "completed", "completed"),
])
def test_finalize_without_a_status_infers_it_for_new_code_too(store, logged, explicit, status):
    run = ExecutionTracker("dada", store=store)
    for item_type in logged:
        run.log(item_type, "x")
    assert (run.finalize() if explicit is None else run.finalize(explicit)) == run.execution_id
    assert store.load(run.execution_id)["status"] == status


def test_set_stage_is_accepted_and_iteration_setters_are_defaults(store, tracker_warnings):
    run = ExecutionTracker("dada", store=store)
    run.set_stage(3)
    run.set_stage_iteration(4)
    run.set_loop_iteration(2)
    run.log_output_text("a")                                   # the defaults
    run.log_output_text("b", stage_iteration=1, loop_iteration=5, stage=2)  # the call names its own
    run.set_stage_iteration(None)
    run.set_loop_iteration(None)
    run.log_output_text("c")
    run.finalize()
    assert tracker_warnings() == []
    got = [(i["stage"], i["stage_iteration"], i["loop_iteration"]) for i in store.load(run.execution_id)["items"]]
    assert got == [(4, 4, 2), (2, 1, 5), (4, None, None)]


#: Per 2b method: a call of the new shape and a call of the 2b shape, each with the item
#: fields it must record (besides sequence_number, timestamp, item_type, media_type).
BOTH_READINGS = {
    "pipeline_start": [
        (("hello",), {"metadata": {"a": 1}}, {"stage": 0, "content": "hello", "metadata": {"a": 1}}),
        (("hello", {"a": 1}), {}, {"stage": 0, "content": "hello", "metadata": {"a": 1}})],
    "user_input_text": [
        (("x",), {"metadata": {"k": "v"}}, {"stage": 1, "content": "x", "metadata": {"k": "v"}}),
        ((), {"text": "x"}, {"stage": 1, "content": "x"})],
    "user_input_image": [
        ((), {"content": "a cat", "file_path": "in.png"}, {"stage": 1, "content": "a cat", "file_path": "in.png"}),
        (("in.png",), {}, {"stage": 1, "file_path": "in.png"})],  # both fit: the 2b reading (the rule)
    "translation_result": [
        (("A flower",), {"model_used": "m", "metadata": {"from_lang": "de"}},
         {"stage": 1, "content": "A flower", "model_used": "m", "metadata": {"from_lang": "de"}}),
        (("A flower", "de", "en", "m", 0.4), {"backend_type": "ollama"},
         {"stage": 1, "content": "A flower", "model_used": "m", "execution_time": 0.4, "backend_used": "ollama",
          "metadata": {"from_lang": "de", "to_lang": "en"}})],
    "stage1_safety_check": [
        (("safe",), {"execution_time": 0.5}, {"stage": 1, "content": "safe", "execution_time": 0.5}),
        ((True, "llm"), {}, {"stage": 1, "execution_time": 0.001,
                             "metadata": {"safe": True, "method": "llm", "found_terms": None}})],
    "stage1_blocked": [
        (("no",), {"model_used": "g"}, {"stage": 1, "content": "no", "model_used": "g"}),
        (("violence", ["S1"]), {}, {"stage": 1, "metadata": {"blocked_reason": "violence", "blocked_codes": ["S1"]}})],
    "interception_iteration": [
        ((2, "text"), {"model_used": "m"}, {"stage": 2, "stage_iteration": 2, "content": "text", "model_used": "m"}),
        ((2, "text", "de", "en", "m"), {}, {"stage": 2, "stage_iteration": 2, "content": "text", "model_used": "m",
                                           "metadata": {"from_lang": "de", "to_lang": "en"}})],
    "interception_final": [
        (("final",), {"execution_time": 1.0}, {"stage": 2, "content": "final", "execution_time": 1.0}),
        (("final", 3), {}, {"stage": 2, "content": "final", "metadata": {"total_iterations": 3}})],
    "stage3_safety_check": [
        (("safe",), {"loop_iteration": 1}, {"stage": 3, "content": "safe", "loop_iteration": 1}),
        ((1, True, "llm", "dada"), {}, {"stage": 3, "loop_iteration": 1, "config_used": "dada",
                                        "metadata": {"safe": True, "method": "llm"}})],
    "stage3_blocked": [
        (("unsafe",), {"loop_iteration": 2}, {"stage": 3, "content": "unsafe", "loop_iteration": 2}),
        ((2, "dada", "unsafe"), {}, {"stage": 3, "content": "unsafe", "loop_iteration": 2, "config_used": "dada"})],
    "pipeline_complete": [
        (("done",), {"metadata": {"n": 2}}, {"stage": 0, "content": "done", "metadata": {"n": 2}}),
        ((12.5, 2), {}, {"stage": 0, "metadata": {"total_duration": 12.5, "outputs_generated": 2}})],
    "pipeline_error": [
        (("boom",), {"stage": 2}, {"stage": 2, "content": "boom"}),
        (("RuntimeError", "boom", 2), {}, {"stage": 2, "content": "boom", "metadata": {"error_type": "RuntimeError"}})],
    "stage_transition": [
        (("moving on",), {"stage": 1}, {"stage": 1, "content": "moving on"}),
        ((1, 2), {}, {"stage": 1, "metadata": {"from_stage": 1, "to_stage": 2}})],
}
for _media in ("output_image", "output_audio", "output_music", "output_video", "output_3d"):
    BOTH_READINGS[_media] = [
        (("a caption",), {"file_path": "x.png", "loop_iteration": 1},
         {"stage": 4, "content": "a caption", "file_path": "x.png", "loop_iteration": 1}),
        ((1, "dada", "x.png", "m", "comfyui", {"seed": 1}), {},
         {"stage": 4, "loop_iteration": 1, "config_used": "dada", "file_path": "x.png", "model_used": "m",
          "backend_used": "comfyui", "metadata": {"seed": 1}})]


def test_every_earlier_method_has_both_readings_tested():
    assert set(BOTH_READINGS) == set(SHAPES)


def test_new_keywords_are_those_of_log():
    parameters = inspect.signature(ExecutionTracker.log).parameters
    assert NEW_KEYWORDS == {name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY} | {"content"}


@pytest.mark.parametrize("reading", [0, 1], ids=["new", "earlier"])
@pytest.mark.parametrize("item_type", sorted(BOTH_READINGS))
def test_each_call_is_read_one_way_by_the_rule(store, tracker_warnings, item_type, reading):
    args, kwargs, fields = BOTH_READINGS[item_type][reading]
    run = ExecutionTracker("dada", store=store, clock=StepClock(START))
    assert getattr(run, f"log_{item_type}")(*args, **kwargs) == 1
    run.finalize("completed")
    assert tracker_warnings() == []
    expected = item(1, item_type, fields.pop("stage"), fields.pop("content", None), **fields)
    assert store.load(run.execution_id)["items"] == [expected]


def test_a_call_that_fits_neither_shape_keeps_what_it_has_and_warns(store, tracker_warnings):
    run = ExecutionTracker("dada", store=store, clock=StepClock(START))
    run.log_stage3_safety_check(1, True)
    run.finalize("completed")
    assert tracker_warnings() == ["execution tracker: log_stage3_safety_check called without method, config_used; "
                                  "recorded as null"]
    assert store.load(run.execution_id)["items"] == [
        item(1, "stage3_safety_check", 3, loop_iteration=1, metadata={"safe": True, "method": None})]


def test_keywords_of_log_pass_on_in_the_earlier_reading(store, tracker_warnings):
    run = ExecutionTracker("dada", store=store, clock=StepClock(START))
    run.log_interception_iteration(1, "Runde 1", "de", "en", "m", backend_type="ollama", execution_time=0.8)
    run.log_pipeline_error("RuntimeError", "boom", 2, metadata={"trace": "x"})
    run.log_output_image(2, config_used="sd35", file_path="o.png", model_used="sd", backend_used="comfyui",
                         metadata={}, content="a caption")
    run.finalize("failed")
    assert tracker_warnings() == []
    assert store.load(run.execution_id)["items"] == [
        item(1, "interception_iteration", 2, "Runde 1", stage_iteration=1, model_used="m", backend_used="ollama",
             execution_time=0.8, metadata={"from_lang": "de", "to_lang": "en"}),
        item(2, "pipeline_error", 2, "boom", metadata={"error_type": "RuntimeError", "trace": "x"}),
        item(3, "output_image", 4, "a caption", loop_iteration=2, config_used="sd35", file_path="o.png",
             model_used="sd", backend_used="comfyui")]


def test_backend_type_is_backend_used_in_the_generic_log(store):
    run = ExecutionTracker("dada", store=store)
    run.log("output_text", "x", backend_type="ollama", config_used="dada")
    run.log("output_text", "y", backend_type="ignored", backend_used="openrouter")
    run.finalize()
    items = store.load(run.execution_id)["items"]
    assert [(i["backend_used"], i["config_used"]) for i in items] == [("ollama", "dada"), ("openrouter", None)]


#: API.md 1b's media_type rule, applied by hand to every type of taxonomy 1.1.
EVERY_MEDIA_TYPE = {
    **dict.fromkeys(["pipeline_start", "config_loaded", "pipeline_warning", "pipeline_error", "pipeline_complete",
                     "stage_transition", "language_detection", "stage1_safety_check", "stage1_blocked",
                     "stage3_safety_check", "stage3_blocked"], "metadata"),
    **dict.fromkeys(["user_input_text", "translation_result", "interception_iteration", "interception_final",
                     "prompt_optimization", "stage3_translation", "output_text"], "text"),
    **dict.fromkeys(["user_input_image", "stage1_safety_check_image", "output_image"], "image"),
    **dict.fromkeys(["user_input_audio", "output_audio"], "audio"),
    "output_music": "music", "output_video": "video", "output_3d": "3d",
}


def test_every_new_item_carries_the_media_type_of_its_type(store):
    from execution_history.taxonomy import TAXONOMY

    from .conftest import record_every_type

    record = store.load(record_every_type(store))
    assert set(EVERY_MEDIA_TYPE) == set(TAXONOMY)
    assert {i["item_type"]: i["media_type"] for i in record["items"][:len(TAXONOMY)]} == EVERY_MEDIA_TYPE
    assert record["taxonomy_version"] == "1.1"
