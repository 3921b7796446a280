"""The workbench app: `create_app(runs_dir, ...)` builds it, `launch(...)` builds and serves it.

The app is a gr.Blocks (`WorkbenchApp`) that owns an AppContext: the run store and launcher, the
scheduler ticker thread, the roots users may point at, the model cache. Launching it starts the
ticker (after marking runs whose worker died while no UI was up) and applies the serving rules:
loopback unless credentials are given, files served only from the runs dir and the checkpoint
folders, an upload size limit. Closing it stops the ticker.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import gradio as gr
from starlette.middleware import Middleware

from app import safety
from app.context import AppContext
from app.tabs import BuildContext, compare, embeddings, evaluate, launch, runs
from core import paths

TABS = (launch, runs, compare, evaluate, embeddings)  # one module per tab; see app/tabs/__init__.py
CSS_PATH = Path(__file__).with_name("style.css")
MAX_FILE_SIZE = "10mb"
# What answers without a login (with --auth): the login page and its static files, /gradio_api/app_id (a random
# number per launch, which keys nothing this app uses) and /gradio_api/startup-events. Every route with the
# app's config, runs, files or queue answers 401 (gradio's own check). FastAPI's schema and docs pages are off.
UNAUTHENTICATED_ROUTES_OFF = {"openapi_url": None, "docs_url": None, "redoc_url": None}
TITLE = "VA-π Workbench"


class WorkbenchApp(gr.Blocks):
    """gr.Blocks with the workbench's context; `launch` and `close` also start and stop its ticker."""

    def __init__(self, ctx: AppContext, **kwargs: Any):
        kwargs.setdefault("delete_cache", (3600, 7200))  # served copies of images and zips: hourly, after 2 h
        super().__init__(title=TITLE, analytics_enabled=False, **kwargs)
        self.ctx = ctx

    def launch(self, **kwargs: Any):  # type: ignore[override]
        """gr.Blocks.launch with the workbench's defaults. Raises safety.UnsafeBindError for a non-loopback
        server_name without auth. Returns what gr.Blocks.launch returns: (fastapi app, local url, share url)."""
        host = kwargs.get("server_name") or "127.0.0.1"
        safety.check_bind(host, kwargs.get("auth"))
        if kwargs.get("share"):
            raise safety.UnsafeBindError("share links are disabled: the app starts training runs and serves run folders")
        kwargs.update(server_name=host, share=False)
        auth = kwargs.get("auth")
        if auth and not callable(auth):  # a list of (user, password): checked with a rate limit
            kwargs["auth"] = safety.LoginGuard([auth] if isinstance(auth, tuple) else list(auth)).check
        safety.check_ssl(kwargs.get("ssl_certfile"), kwargs.get("ssl_keyfile"))
        if kwargs.get("ssl_certfile"):
            kwargs.setdefault("ssl_verify", False)  # gradio's own start-up request: a self-signed cert is fine
        kwargs.setdefault("allowed_paths", self.ctx.allowed_paths())
        kwargs.setdefault("max_file_size", MAX_FILE_SIZE)
        kwargs.setdefault("run_history", False)
        kwargs.setdefault("footer_links", ["api", "settings"])
        kwargs.setdefault("show_error", True)
        kwargs.setdefault("ssr_mode", False)
        kwargs.setdefault("enable_monitoring", False)
        kwargs.setdefault("mcp_server", False)
        kwargs.setdefault("css_paths", [CSS_PATH])
        kwargs["app_kwargs"] = {**UNAUTHENTICATED_ROUTES_OFF, **(kwargs.get("app_kwargs") or {}),
                                "middleware": [Middleware(safety.ClientAddress)]}  # the login throttle's client
        self.ctx.start()
        try:
            return super().launch(**kwargs)
        except BaseException:
            self.ctx.close()
            raise

    def close(self, verbose: bool = True) -> None:
        self.ctx.close()
        super().close(verbose)


def create_app(runs_dir: str | Path | None = None, *, data_roots: Optional[Sequence[str | Path]] = None,
               page_timer_s: float = 1.0, model_cache_size: int = 2, stop_grace_s: Optional[float] = None) -> WorkbenchApp:
    """Build the workbench on `runs_dir` (default core.paths.RUNS_DIR). `data_roots`: folders a user may
    name as training data (default: <repo>/data). Nothing is started until `launch`."""
    ctx = AppContext(runs_dir=Path(runs_dir or paths.RUNS_DIR),
                     data_roots=[Path(r) for r in (data_roots if data_roots is not None else [paths.ROOT / "data"])],
                     page_timer_s=page_timer_s, model_cache_size=model_cache_size, stop_grace_s=stop_grace_s)
    app = WorkbenchApp(ctx)
    with app:
        gr.Markdown(f"## {TITLE}\nPost-train autoregressive image generators with VA-π · runs in `{ctx.runs_dir}`",
                    elem_classes=["app-title"])
        with gr.Tabs() as tabs:
            build_ctx = BuildContext(app=ctx, blocks=app, tabs=tabs)
            for tab in TABS:
                with gr.Tab(tab.LABEL, id=tab.TAB_ID, elem_id=f"tab-{tab.TAB_ID}") as t:
                    build_ctx.export(f"{tab.TAB_ID}.tab", t)
                    tab.build(build_ctx)
        build_ctx.finish()
    app.queue(default_concurrency_limit=4)
    return app


def launch(runs_dir: str | Path | None = None, *, host: str = "127.0.0.1", port: Optional[int] = None,
           auth: Optional[Sequence[tuple[str, str]]] = None, data_roots: Optional[Sequence[str | Path]] = None,
           prevent_thread_lock: bool = False, quiet: bool = False, ssl_certfile: Optional[str] = None,
           ssl_keyfile: Optional[str] = None, **create_kwargs: Any) -> tuple[WorkbenchApp, str]:
    """Build and serve the workbench. Returns (app, local url); with prevent_thread_lock the server runs
    in a background thread (tests), otherwise this blocks until Ctrl-C."""
    safety.check_bind(host, auth)
    app = create_app(runs_dir, data_roots=data_roots, **create_kwargs)
    _, url, _ = app.launch(server_name=host, server_port=port, auth=list(auth) if auth else None,
                           prevent_thread_lock=prevent_thread_lock, quiet=quiet, ssl_certfile=ssl_certfile,
                           ssl_keyfile=ssl_keyfile)
    return app, url
