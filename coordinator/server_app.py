"""The coordinator's Flower ServerApp: a thin adapter from :class:`coordinator.phases.Run`
to Flower's Message API.

Everything this file does is carry requests to SuperNodes and replies back
(``grid.send_and_receive`` with a timeout on every round). A node that is gone returns as an
error reply (Flower code 5, "node unavailable") or not at all before the timeout; both count
as a dropout, and the run goes on with the remaining sites. The phases themselves, their
state and the report live in :mod:`coordinator.phases`.

Run config comes from ``[tool.flwr.app.config]`` in pyproject.toml, overridden per run by
``synthlearn coordinator run`` (``flwr run --run-config``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from coordinator.phases import Run, settings_from_run_config
from shared.files import atomic_write_json
from shared.progress import log_to_stdout
from shared.protocol import Outcome

app = ServerApp()
_logger = logging.getLogger("synthlearn.coordinator")


class FlowerTransport:
    """Rounds over a Flower Grid; optionally records every payload that crosses."""

    name = "flower"

    def __init__(self, grid: Grid, record_dir: Path | None = None) -> None:
        self.grid = grid
        self.record_dir = record_dir
        self.rounds: list[dict[str, Any]] = []

    def node_ids(self) -> list[int]:
        return sorted(int(n) for n in self.grid.get_node_ids())

    def exchange(self, kind: str, requests: Mapping[int, dict[str, Any]],
                 weights: Mapping[int, dict[str, bytes]] | None,
                 timeout: float) -> dict[int, Outcome]:
        messages = []
        sent_bytes = 0
        for node, req in requests.items():
            content = RecordDict({"request": ConfigRecord(dict(req))})
            arrays = (weights or {}).get(node)
            if arrays:
                content["weights"] = ArrayRecord(
                    {role: Array(np.frombuffer(data, dtype=np.uint8))
                     for role, data in arrays.items()})
                sent_bytes += sum(len(d) for d in arrays.values())
            messages.append(Message(content=content, dst_node_id=int(node), message_type=kind))
            self._record("sent", kind, int(node), dict(req), arrays or {})
        t0 = time.monotonic()
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        seconds = time.monotonic() - t0
        out: dict[int, Outcome] = {}
        received_bytes = 0
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            if reply.has_error():
                err = reply.error
                out[node] = Outcome(node, error=f"Flower error code {err.code}: {err.reason}")
                self._record("error", kind, node, {"code": err.code, "reason": err.reason}, {})
                continue
            cfg = dict(reply.content.config_records.get("reply", {}))
            bundle = None
            if "bundle" in reply.content.array_records:
                bundle = reply.content.array_records["bundle"]["bundle"].numpy().tobytes()
                received_bytes += len(bundle)
            out[node] = Outcome(node, config=cfg, bundle=bundle)
            self._record("received", kind, node, cfg, {"bundle": bundle} if bundle else {})
        self.rounds.append({"kind": kind, "nodes": len(messages), "replies": len(replies),
                            "seconds": round(seconds, 2), "sent_bytes": sent_bytes,
                            "received_bytes": received_bytes})
        _logger.info("round %s: %d/%d replies in %.1f s", kind, len(out), len(messages),
                     seconds)
        return out

    def _record(self, direction: str, kind: str, node: int, config: dict[str, Any],
                arrays: Mapping[str, bytes | None]) -> None:
        """Test/audit hook: every payload that crosses, as files (config JSON + raw bytes)."""
        if self.record_dir is None:
            return
        self.record_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{len(self.rounds):02d}-{kind}-{direction}-{node}"
        atomic_write_json(self.record_dir / f"{stem}.json", config)
        for role, data in arrays.items():
            if data:
                (self.record_dir / f"{stem}-{role}.bin").write_bytes(data)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Drive the phases; a failure raises, so `flwr ls` reports the run as failed."""
    log_to_stdout()
    settings = settings_from_run_config(dict(context.run_config))
    transport = FlowerTransport(grid, settings.work / "messages" if settings.record_messages
                                else None)
    run = Run(settings, transport)
    try:
        run.execute()
    finally:
        rounds_file = settings.work / "rounds.jsonl"
        with rounds_file.open("a") as fh:
            for r in transport.rounds:
                fh.write(json.dumps(r) + "\n")
