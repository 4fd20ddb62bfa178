"""Sliders where a learner would rather move a value than edit a number.

``explorer(fn, n=(256, 16384, 256, 4096), ...)`` shows one slider per keyword in JupyterLab and
calls ``fn`` with the values whenever one moves. When headless (nbval, the grader, CI) or when
ipywidgets is missing, it calls ``fn`` once with the default values instead, so the cell's output
is deterministic plain text and the notebook still reads well.
"""

from __future__ import annotations

from typing import Any, Callable

from . import runtime

Control = tuple  # (min, max, step, default) for numbers, or (list_of_options, default)


def _slider(name: str, spec: Control):
    import ipywidgets as w

    if isinstance(spec[0], (list, tuple)):
        options, default = spec
        return w.Dropdown(options=list(options), value=default, description=name)
    low, high, step, default = spec
    if all(isinstance(v, int) for v in spec):
        return w.IntSlider(min=low, max=high, step=step, value=default, description=name, continuous_update=False)
    return w.FloatSlider(min=low, max=high, step=step, value=default, description=name, continuous_update=False)


def defaults(controls: dict[str, Control]) -> dict[str, Any]:
    values = {}
    for name, spec in controls.items():
        if not isinstance(spec, tuple) or len(spec) not in (2, 4):
            raise ValueError(f"control {name!r} must be (min, max, step, default) or (options, default), got {spec!r}")
        values[name] = spec[-1]
        if len(spec) == 4 and not spec[0] <= spec[3] <= spec[1]:
            raise ValueError(f"control {name!r}: default {spec[3]} is outside [{spec[0]}, {spec[1]}]")
        if len(spec) == 2 and spec[1] not in spec[0]:
            raise ValueError(f"control {name!r}: default {spec[1]!r} is not one of {list(spec[0])}")
    return values


def explorer(fn: Callable[..., Any], **controls: Control) -> None:
    """Interactive sliders calling ``fn(**values)``; a single static call when headless."""
    values = defaults(controls)
    if runtime.headless():
        fn(**values)
        return
    try:
        import ipywidgets as w
        from IPython.display import display
    except ImportError:
        fn(**values)
        return
    sliders = {name: _slider(name, spec) for name, spec in controls.items()}
    out = w.interactive_output(fn, sliders)
    display(w.VBox([w.HBox(list(sliders.values())[i:i + 3]) for i in range(0, len(sliders), 3)] + [out]))
