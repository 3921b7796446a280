"""The VA-π Workbench UI (Gradio): Launch, Runs and Compare tabs over the run store.

The UI never trains in its own process: it submits runs to core.runs.Launcher, reads everything it
shows from the run store, and samples in-process only for the Compare tab.

    from app import create_app, launch
    app = create_app("runs")                      # a gr.Blocks
    app.launch(prevent_thread_lock=True)          # serves on 127.0.0.1; app.close() stops it
"""
from app.main import TABS, WorkbenchApp, create_app, launch

__all__ = ["TABS", "WorkbenchApp", "create_app", "launch"]
