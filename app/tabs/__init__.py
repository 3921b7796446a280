"""The workbench's tabs: one module per tab, each with TAB_ID, LABEL and `build(ctx)`.

`build` runs inside the tab's `gr.Tab` context. Tabs talk to each other only through components
they export on the BuildContext (e.g. the Runs tab exports its run selector, which the Launch tab
sets after a launch); wiring that needs a component of a later tab goes in `ctx.after_build`.
Adding a tab is one new module and one entry in `app.main.TABS`. What several tabs share (the job
forms' extractor checks, form numbers, field errors) is in `app.tabs.shared`, which is not a tab.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from app.context import AppContext


@dataclass
class BuildContext:
    """Build-time only: the shared app resources, the Tabs container and the components tabs export.
    Nothing here changes while the app serves requests."""

    app: AppContext
    blocks: gr.Blocks
    tabs: gr.Tabs
    exports: dict[str, Any] = field(default_factory=dict)
    _after: list[Callable[[], None]] = field(default_factory=list)

    def export(self, name: str, component: Any) -> None:
        if name in self.exports:
            raise ValueError(f"component {name!r} is exported twice")
        self.exports[name] = component

    def get(self, name: str) -> Any:
        if name not in self.exports:
            raise KeyError(f"no tab exported {name!r} (built so far: {', '.join(sorted(self.exports))})")
        return self.exports[name]

    def after_build(self, fn: Callable[[], None]) -> None:
        self._after.append(fn)

    def finish(self) -> None:
        for fn in self._after:
            fn()
        self._after.clear()
