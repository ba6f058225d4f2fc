"""The serve tests' optional dependencies, imported first by each test module that needs them:
`from .deps import httpx` skips the module, with the reason, where the serve extra or httpx is missing."""

from __future__ import annotations

import pytest

for _name in ("starlette", "uvicorn"):
    pytest.importorskip(_name, reason=f"{_name} is missing: install the serve extra (pip install -e '.[serve]')")
httpx = pytest.importorskip("httpx", reason="httpx (the tests' HTTP client) is not installed: pip install httpx")
