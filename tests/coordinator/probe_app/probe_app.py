"""Probe app: the ServerApp asks every SuperNode once; a ClientApp that runs leaves a marker."""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server = ServerApp()
client = ClientApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    deadline = time.monotonic() + 30
    nodes: list[int] = []
    while not nodes and time.monotonic() < deadline:
        nodes = list(grid.get_node_ids())
        time.sleep(0.5)
    content = RecordDict({"probe": ConfigRecord({"label": str(context.run_config["label"])})})
    messages = [Message(content=content, dst_node_id=n, message_type="query") for n in nodes]
    list(grid.send_and_receive(messages, timeout=60))


@client.query()
def query(msg: Message, context: Context) -> Message:
    label = str(msg.content["probe"]["label"])  # type: ignore[index]
    marker_dir = Path(str(context.node_config["marker-dir"]))
    marker_dir.mkdir(parents=True, exist_ok=True)
    (marker_dir / label).write_text("ran\n")
    return Message(RecordDict({"probe": ConfigRecord({"ran": label})}), reply_to=msg)
