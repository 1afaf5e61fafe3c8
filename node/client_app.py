"""The site's Flower ClientApp: a thin adapter from Flower messages to :mod:`node.federation`.

Flower starts one ClientApp process per message. The site directory and key come from the
SuperNode's ``--node-config`` (set by the hospital's admin via ``synthlearn node join``), never
from the coordinator. Every request is checked against :data:`shared.protocol.ACTIONS`; a
request for anything else gets a ``refused`` reply with the reason instead of data.

Message layout (protocol 1):

* request: ``ConfigRecord "request"`` (action, protocol, parameters); for ``evaluate`` also
  ``ArrayRecord "weights"`` with the npz bytes as uint8 arrays ("pooled", optionally "own");
  for a round-2 ``export-bundle`` the same record holds "pretrain" (the other sites'
  synthetic images, :mod:`shared.pretrain_set`);
* reply: ``ConfigRecord "reply"`` (status, site, numbers, one JSON document of signed
  records); for ``export-bundle`` also ``ArrayRecord "bundle"`` (the signed bundle file as
  uint8; Flower chunks it).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from node.federation import (
    NodeSettings,
    check_request,
    handle_evaluate,
    handle_export,
    handle_ping,
    refusal,
    settings_from_node_config,
)
from shared.errors import RequestRefusedError, SynthlearnError
from shared.progress import log_to_stdout
from shared.protocol import Reply

app = ClientApp()
_logger = logging.getLogger("synthlearn.node")
"""Libraries log (ARCHITECTURE.md, output rule); :func:`shared.progress.log_to_stdout` sends
it to the SuperNode's log."""


def _request(content: RecordDict) -> dict[str, Any]:
    if "request" not in content.config_records:
        raise RequestRefusedError("message has no 'request' config record")
    return dict(content.config_records["request"])


def _arrays(content: RecordDict) -> dict[str, bytes]:
    """The message's byte payloads (ArrayRecord "weights", role → uint8 array): CNN weights
    for ``evaluate``, the round-2 pretraining set for ``export-bundle``."""
    out: dict[str, bytes] = {}
    if "weights" in content.array_records:
        for role, arr in content.array_records["weights"].items():
            out[role] = arr.numpy().astype(np.uint8, copy=False).tobytes()
    return out


def _to_content(reply: Reply) -> RecordDict:
    content = RecordDict({"reply": ConfigRecord(dict(reply.config))})
    if reply.bundle is not None:
        arr = np.frombuffer(reply.bundle, dtype=np.uint8)
        content["bundle"] = ArrayRecord({"bundle": Array(arr)})
    return content


def answer_content(content: RecordDict, node_config: dict[str, Any], expected: str) -> RecordDict:
    """The reply content for one request content (no Flower runtime needed: testable)."""
    settings: NodeSettings | None = None
    action = expected
    request: dict[str, Any] = {}
    try:
        settings = settings_from_node_config(node_config)
        request = _request(content)
        action = check_request(request)
        if action not in _HANDLERS.get(expected, ()):
            raise RequestRefusedError(
                f"action {action!r} is not answered on a {expected} message")
        if action == "ping":
            reply = handle_ping(settings, request)
        elif action == "export-bundle":
            arrays = _arrays(content)
            unknown = sorted(set(arrays) - {"pretrain"})
            if unknown:
                raise RequestRefusedError(f"export-bundle request carries arrays {unknown}; "
                                          "only a round-2 'pretrain' set may come with it")
            reply = handle_export(settings, request, log=_logger.info,
                                  pretrain=arrays.get("pretrain"))
        else:
            weights = _arrays(content)
            if "pooled" not in weights:
                raise RequestRefusedError("evaluate request carries no 'pooled' weights")
            reply = handle_evaluate(settings, request, weights)
    except RequestRefusedError as exc:
        reply = refusal(action, str(exc), settings, request)
    except SynthlearnError as exc:
        # A known failure (missing store, failed audit gate…): the message, not a traceback,
        # goes back, so no local path detail beyond what the error names.
        reply = refusal(action, f"{type(exc).__name__}: {exc}", settings, request, "failed")
    except Exception as exc:  # an unexpected bug: log locally, send only its type
        _logger.exception("unexpected error answering %s", action)
        reply = refusal(action, f"unexpected {type(exc).__name__} at the site; see the "
                                "SuperNode log there", settings, request, "failed")
    return _to_content(reply)


def _answer(msg: Message, context: Context, expected: str) -> Message:
    log_to_stdout()
    content = answer_content(msg.content, dict(context.node_config), expected)
    return Message(content=content, reply_to=msg)


_HANDLERS = {"query": ("ping",), "train": ("export-bundle",), "evaluate": ("evaluate",)}


@app.query()
def query(msg: Message, context: Context) -> Message:
    """``ping``: site name, software version, key fingerprint."""
    return _answer(msg, context, "query")


@app.train()
def train(msg: Message, context: Context) -> Message:
    """``export-bundle``: a fresh signed bundle (optionally after training on request)."""
    return _answer(msg, context, "train")


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """``evaluate``: signed AUC + CI of the sent CNN weights on the real test split."""
    return _answer(msg, context, "evaluate")


def describe_reply(content: RecordDict) -> dict[str, Any]:
    """The reply's config as a plain dict (for logs and tests)."""
    cfg = dict(content.config_records["reply"])
    if "reply-json" in cfg:
        cfg["reply-json"] = json.loads(str(cfg["reply-json"]))
    return cfg
