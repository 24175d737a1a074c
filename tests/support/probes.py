"""Reading a worker's /livez probe the way kubelet does (status code and its JSON body)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def livez(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
