"""An ONNX Runtime session stand-in the runtime tests share (no serve extra needed)."""

from __future__ import annotations

import time


class SlowSession:
    """An ONNX Runtime session that sleeps before every run and counts runs, so a tiny model decodes at a
    watchable pace and a test can see how many steps ran."""

    def __init__(self, session, delay: float):
        self._session, self._delay = session, delay
        self.runs = 0

    def run_with_iobinding(self, *args, **kwargs):
        self.runs += 1
        time.sleep(self._delay)
        return self._session.run_with_iobinding(*args, **kwargs)

    def run(self, *args, **kwargs):
        self.runs += 1
        time.sleep(self._delay)
        return self._session.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)
