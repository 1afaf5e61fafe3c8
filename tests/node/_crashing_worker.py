"""A stand-in for ``node.ingest.process_file`` that kills its worker process on one file.

Lives in its own small module so that spawned pool workers can import it by name (the test
patches ``node.ingest.process_file`` with :func:`process_file` in the main process).
"""

from __future__ import annotations

import os
from pathlib import Path

from node import ingest
from node.store import Accepted, Skipped

CRASH_ON = "SYNTHLEARN_TEST_CRASH_ON"
"""Environment variable: the file name whose decode kills the worker (as a C codec would)."""

_real = ingest.process_file


def process_file(rel: str) -> Accepted | Skipped:
    if Path(rel).name == os.environ.get(CRASH_ON):
        os._exit(70)  # no exception, no cleanup: like a segfault or an OOM kill
    return _real(rel)
