"""A small phantom site with a trained tiny generator and a synthetic set, for the reader-study
tests (built once per test module, copied per test)."""

from __future__ import annotations

import shutil
from pathlib import Path

from node.training import GanConfig

TINY = GanConfig(resolution=32, batch=16, kimg=0.032, checkpoint_kimg=1.0, channel_base=128,
                 channel_min=4, z_dim=8, w_dim=16, min_class_images=8, device="cpu",
                 grid_per_class=2)


def build_site(root: Path, kimg: float = TINY.kimg) -> Path:
    """40 phantom images at 32² (8 in the test split), a trained run and a 24-image set."""
    from dataclasses import replace

    from node.generate import generate
    from node.phantoms import phantom_store
    from node.training import train

    site = phantom_store(root / "site", 40, 32)
    train(site, replace(TINY, kimg=kimg), progress=False)
    generate(site, 24, seed=1)
    return site


def copy_site(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


class LiveServer:
    """The real uvicorn server on a loopback port, in a thread, that a test can stop and start
    again on the same port (a "server stopped mid-study")."""

    def __init__(self, app: object, port: int = 0) -> None:
        self.app = app
        self.port = port
        self._server: object | None = None
        self._thread: object | None = None

    def start(self) -> LiveServer:
        import threading
        import time

        import uvicorn

        server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1",  # type: ignore[arg-type]
                                               port=self.port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("reader-study test server did not start")
            time.sleep(0.02)
        self.port = server.servers[0].sockets[0].getsockname()[1]
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            server.should_exit = True  # type: ignore[attr-defined]
            thread.join(timeout=30)  # type: ignore[attr-defined]
        self._server = self._thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"
