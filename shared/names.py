"""The one rule for turning a name someone else chose into a file or folder name.

Site pseudonyms and run tags arrive from other parties (a reply, a request, a bundle's
manifest) and end up in paths; one sanitiser keeps every such path inside its folder.

>>> safe_name("site a/../b")
'site_a_.._b'
>>> safe_name("..")
'site'
>>> safe_name("", fallback="federation")
'federation'
"""

from __future__ import annotations

import re

SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""What a site pseudonym may be (bundle manifests, pings, replies): 1–64 letters, digits,
``.``, ``_`` or ``-``, starting with a letter or digit."""


def safe_name(text: str, *, fallback: str = "site", max_len: int = 64) -> str:
    """Letters, digits, ``-``, ``_`` and ``.`` kept, anything else ``_``; never starting or
    ending with a dot or dash (no ``..``, no hidden file), at most ``max_len`` characters."""
    clean = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))
    clean = clean[:max_len].strip("-.")
    return clean or fallback
