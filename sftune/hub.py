"""Is the Hugging Face Hub reachable? Asked once per process, before anything is loaded from it.

Without this check an unreachable Hub costs about a minute: huggingface_hub retries every file five times with
backoff, and prints a line per retry. One HEAD request with a short timeout answers the same question in
seconds, and the error then says how to work offline. With HF_HUB_OFFLINE=1 the libraries never go online, so
there is nothing to check.
"""

from __future__ import annotations

import functools
import os
import urllib.error
import urllib.request

from sftune.errors import UsageError

TIMEOUT_S = 5.0
OFFLINE_HOW = ("To work offline: set HF_HUB_OFFLINE=1 to use what the Hugging Face cache already holds, give a "
               "local model directory (or the alias minilm), and pass --data-dir with GLUE-format files.")


def offline_mode() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@functools.cache
def _reachable(url: str) -> bool:
    try:
        # urllib honours HTTPS_PROXY and friends, as huggingface_hub does.
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return True  # the server answered: the network works, whatever it thinks of the request
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return True


def require_hub(what: str) -> None:
    """Raise one clear UsageError when `what` must come from the Hub and the Hub cannot be reached."""
    if offline_mode() or _reachable(endpoint()):
        return
    raise UsageError(f"cannot reach the Hugging Face Hub ({endpoint()}) to load {what}. {OFFLINE_HOW}")
