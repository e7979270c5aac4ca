"""The earlier tracker's call shapes (API.md 2b) on the one ExecutionTracker: how a call is read.

Pipeline code written for the earlier tracker calls ``log_*`` methods with other
parameters (``log_translation_result(text, "de", "en", model, 0.4)``) and sets
iteration defaults with ``set_stage_iteration``. Both kinds of code use the same
methods, so each call is read one of two ways, by one rule:

- A call is read the **earlier** way when its arguments bind to the 2b signature (every
  required parameter given, positionally or by name; ``backend_type`` counts as
  ``backend_used``; other keywords of ``log()`` are passed on as they are) and either it
  does not fit the new shape (more positional arguments than the new shape takes, or a
  keyword that only the 2b signature has, such as ``safe`` or ``translated_text``) or
  both fit. The two readings of a call that fits both differ only when one positional
  argument comes with every other required 2b parameter: ``log_user_input_image(x)``
  takes ``x`` as the file path, ``log_output_image(x, config_used=..., file_path=...,
  model_used=..., backend_used=..., metadata=...)`` as the loop iteration (new code names
  ``content=`` to say otherwise).
- Otherwise it is read the **new** way (content first, the keyword arguments of ``log()``).
- A call that fits neither but has more positional arguments than the new shape takes
  is read the earlier way as far as it goes: missing parameters are null, and a warning
  says which.

Where the 2b arguments land: the content parameter (``result_text``, ``translated_text``,
``final_text``, ``error_message``, ``abort_reason``, ...) is the item's content; the
structured ones (``safe``, ``method``, ``from_lang``, ...) go into metadata, each under its
own name, defaults included; ``iteration_num`` is ``stage_iteration``; the ``stage`` of
``log_pipeline_error`` and the ``from_stage`` of ``log_stage_transition`` are the item's stage;
the rest (``model_used``, ``config_used``, ``file_path``, ...) are the item fields of their name.
"""
from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: The keyword arguments the new shape of a ``log_*`` method takes (those of ``log()`` and
#: ``content``); a test keeps this equal to ``ExecutionTracker.log``'s signature.
NEW_KEYWORDS = frozenset({"content", "stage", "stage_iteration", "loop_iteration", "file_path", "model_used",
                          "backend_used", "backend_type", "config_used", "execution_time", "metadata"})
#: 2b parameters whose item field has another name.
_RENAMED = {"iteration_num": "stage_iteration"}


@dataclass(frozen=True)
class EarlierShape:
    """One 2b call shape: its signature and where its parameters land."""

    signature: inspect.Signature
    content: str | None = None          # the parameter that becomes the item's content
    structured: tuple[str, ...] = ()    # parameters that go into metadata
    stage: str | None = None            # the parameter that names the item's stage
    new_positional: int = 1             # positional arguments the new shape takes

    def to_log_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of ``log()`` for the bound 2b *arguments*."""
        values = dict(arguments)
        result: dict[str, Any] = {}
        if self.stage is not None:  # before the structured ones: from_stage is both
            result["stage"] = values.get(self.stage)
        if self.content is not None:
            result["content"] = values.pop(self.content, None)
        structured = {name: values.pop(name, None) for name in self.structured}
        values.pop(self.stage, None)
        for name, value in values.items():
            result[_RENAMED.get(name, name)] = value
        if structured:
            given = result.get("metadata")
            extra = given if isinstance(given, dict) else ({} if given is None else {"value": given})
            result["metadata"] = {**structured, **extra}
        return result


def _shape(stub: Callable[..., None], **where: Any) -> EarlierShape:
    return EarlierShape(inspect.signature(stub), **where)


# The 2b signatures, exactly as API.md lists them (only their signatures are used).
def _pipeline_start(input_text: Any, metadata: Any = None) -> None: ...
def _user_input_text(text: Any) -> None: ...
def _user_input_image(file_path: Any, metadata: Any = None) -> None: ...
def _translation_result(translated_text: Any, from_lang: Any, to_lang: Any, model_used: Any,
                        execution_time: Any, backend_used: Any = None) -> None: ...
def _stage1_safety_check(safe: Any, method: Any, execution_time: Any = 0.001, found_terms: Any = None,
                         model_used: Any = None) -> None: ...
def _stage1_blocked(blocked_reason: Any, blocked_codes: Any, model_used: Any = None,
                    error_message: Any = None) -> None: ...
def _interception_iteration(iteration_num: Any, result_text: Any, from_lang: Any, to_lang: Any, model_used: Any,
                            config_used: Any = None) -> None: ...
def _interception_final(final_text: Any, total_iterations: Any, config_used: Any = None, model_used: Any = None,
                        backend_used: Any = None, execution_time: Any = None) -> None: ...
def _stage3_safety_check(loop_iteration: Any, safe: Any, method: Any, config_used: Any, model_used: Any = None,
                         backend_used: Any = None, execution_time: Any = None) -> None: ...
def _stage3_blocked(loop_iteration: Any, config_used: Any, abort_reason: Any) -> None: ...
def _output_media(loop_iteration: Any, config_used: Any, file_path: Any, model_used: Any, backend_used: Any,
                  metadata: Any, execution_time: Any = None) -> None: ...
def _pipeline_complete(total_duration: Any, outputs_generated: Any) -> None: ...
def _pipeline_error(error_type: Any, error_message: Any, stage: Any) -> None: ...
def _stage_transition(from_stage: Any, to_stage: Any) -> None: ...


#: item type -> its 2b call shape (API.md 2b lists these methods).
SHAPES: dict[str, EarlierShape] = {
    "pipeline_start": _shape(_pipeline_start, content="input_text"),
    "user_input_text": _shape(_user_input_text, content="text"),
    "user_input_image": _shape(_user_input_image),
    "translation_result": _shape(_translation_result, content="translated_text", structured=("from_lang", "to_lang")),
    "stage1_safety_check": _shape(_stage1_safety_check, structured=("safe", "method", "found_terms")),
    "stage1_blocked": _shape(_stage1_blocked, content="error_message", structured=("blocked_reason", "blocked_codes")),
    "interception_iteration": _shape(_interception_iteration, content="result_text",
                                     structured=("from_lang", "to_lang"), new_positional=2),
    "interception_final": _shape(_interception_final, content="final_text", structured=("total_iterations",)),
    "stage3_safety_check": _shape(_stage3_safety_check, structured=("safe", "method")),
    "stage3_blocked": _shape(_stage3_blocked, content="abort_reason"),
    "output_image": _shape(_output_media),
    "output_audio": _shape(_output_media),
    "output_music": _shape(_output_media),
    # not in API.md's list, but the same media outputs: earlier-style code for them records too
    "output_video": _shape(_output_media),
    "output_3d": _shape(_output_media),
    "pipeline_complete": _shape(_pipeline_complete, structured=("total_duration", "outputs_generated")),
    "pipeline_error": _shape(_pipeline_error, content="error_message", structured=("error_type",), stage="stage"),
    "stage_transition": _shape(_stage_transition, structured=("from_stage", "to_stage"), stage="from_stage"),
}


def read_earlier_call(item_type: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The ``log()`` keyword arguments of a call read the earlier way, or None to read it the new way.

    The rule is the module's docstring.
    """
    shape = SHAPES.get(item_type)
    if shape is None:
        return None
    kwargs = dict(kwargs)
    if "backend_type" in kwargs:  # December 2025 on: backend_type= where 2b says backend_used=
        backend_type = kwargs.pop("backend_type")
        if kwargs.get("backend_used") is None:
            kwargs["backend_used"] = backend_type
    fits_new = len(args) <= shape.new_positional and set(kwargs) <= NEW_KEYWORDS
    # keywords of log() that the 2b signature lacks (execution_time= on log_interception_iteration) pass on
    passed_on = {name: kwargs.pop(name) for name in list(kwargs)
                 if name in NEW_KEYWORDS and name not in shape.signature.parameters}
    try:
        bound = shape.signature.bind(*args, **kwargs)
    except TypeError:
        if fits_new:
            return None
        try:
            bound = shape.signature.bind_partial(*args, **kwargs)
        except TypeError:
            return None  # fits neither: the new reading reports the mistake (logged, never raised)
        missing = [name for name, p in shape.signature.parameters.items()
                   if name not in bound.arguments and p.default is inspect.Parameter.empty]
        log.warning("execution tracker: log_%s called without %s; recorded as null",
                    item_type, ", ".join(missing))
    bound.apply_defaults()
    return shape.to_log_arguments({**bound.arguments, **passed_on})


def describe_earlier_shape(item_type: str) -> str:
    """A docstring paragraph naming the 2b signature of ``log_<item_type>`` ("" if it has none)."""
    shape = SHAPES.get(item_type)
    if shape is None:
        return ""
    plain = shape.signature.replace(
        parameters=[p.replace(annotation=inspect.Parameter.empty) for p in shape.signature.parameters.values()],
        return_annotation=inspect.Signature.empty)
    return (f"\n\nAlso takes the earlier tracker's call ``log_{item_type}{plain}`` "
            "(``backend_type=`` for ``backend_used=``); see ``execution_history/legacy_calls.py``.")


def accept_earlier_shapes(item_type: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """*method* (a new-shape ``log_<item_type>``), also taking the 2b shape of that type if it has one."""
    if item_type not in SHAPES:
        return method

    @functools.wraps(method)
    def either(self: Any, *args: Any, **kwargs: Any) -> Any:
        earlier = read_earlier_call(item_type, args, kwargs)
        if earlier is None:
            return method(self, *args, **kwargs)
        return self.log(item_type, **earlier)

    return either


class EarlierTrackerCalls:
    """The earlier tracker's stage and iteration setters, mixed into ExecutionTracker.

    Class attributes hold the defaults, so a tracker that never calls a setter pays nothing.
    """

    #: Defaults for items whose call names no iteration (``set_stage_iteration``, ``set_loop_iteration``).
    default_stage_iteration: int | None = None
    default_loop_iteration: int | None = None
    #: What ``set_stage`` said last. Accepted, but an item's stage is the one its call names,
    #: else the taxonomy's (API.md 2b).
    current_stage: int | None = None

    def set_stage(self, stage: int | None) -> None:
        """Accepted for earlier code; items keep the stage their call names, else the taxonomy's."""
        self.current_stage = stage

    def set_stage_iteration(self, iteration: int | None) -> None:
        """The ``stage_iteration`` of the items logged from now on that name none (None: no default)."""
        self.default_stage_iteration = iteration

    def set_loop_iteration(self, iteration: int | None) -> None:
        """The ``loop_iteration`` of the items logged from now on that name none (None: no default)."""
        self.default_loop_iteration = iteration
