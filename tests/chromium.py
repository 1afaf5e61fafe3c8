"""Where the headless-Chromium tests find a browser: Debian's ``chromium`` package (never a
browser downloaded at test time). ``None`` makes those tests skip with an install hint."""

from __future__ import annotations

import os
import shutil


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("SYNTHLEARN_REQUIRE_CHROMIUM") == "1":
        raise RuntimeError("SYNTHLEARN_REQUIRE_CHROMIUM=1 but no chromium on PATH: "
                           "`make chromium` installs Debian's package")
    return None
