"""An in-process transport: the same phases and node handlers, without Flower.

Why: to tell Flower's cost and behaviour apart from the system's. A run over this transport
executes exactly the code the SuperNodes execute (:func:`node.client_app.answer_content`, with
the request and reply records built the same way), in this process, one site after another.
The federation benchmark runs the same sites both ways and compares the AUCs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.protocol import Outcome


class LocalTransport:
    """Sites as ``--node-config`` mappings, answered in-process in node-id order."""

    name = "in-process"

    def __init__(self, sites: Mapping[str, Mapping[str, Any]]) -> None:
        self.sites = {i + 1: dict(cfg) for i, cfg in enumerate(sites.values())}
        self.rounds: list[dict[str, Any]] = []

    def node_ids(self) -> list[int]:
        return sorted(self.sites)

    def exchange(self, kind: str, requests: Mapping[int, dict[str, Any]],
                 weights: Mapping[int, dict[str, bytes]] | None,
                 timeout: float) -> dict[int, Outcome]:
        import time

        import numpy as np
        from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

        from node.client_app import answer_content

        out: dict[int, Outcome] = {}
        t0 = time.monotonic()
        for node, req in requests.items():
            content = RecordDict({"request": ConfigRecord(dict(req))})
            arrays = (weights or {}).get(node)
            if arrays:
                content["weights"] = ArrayRecord(
                    {r: Array(np.frombuffer(d, dtype=np.uint8)) for r, d in arrays.items()})
            reply = answer_content(content, self.sites[node], kind)
            cfg = dict(reply.config_records["reply"])
            bundle = None
            if "bundle" in reply.array_records:
                bundle = reply.array_records["bundle"]["bundle"].numpy().tobytes()
            out[node] = Outcome(node, config=cfg, bundle=bundle)
        self.rounds.append({"kind": kind, "nodes": len(requests), "replies": len(out),
                            "seconds": round(time.monotonic() - t0, 2)})
        return out
