"""Started by Python in a worker process whose PYTHONPATH begins with this folder.

Shifts the process's wall clock (time.time, datetime.now, ...) by SKIPLOCK_TEST_CLOCK_OFFSET
seconds and lets it tick; the monotonic clock is left alone, as on a machine whose clock is
simply set wrong. (libfaketime hung or failed with EINVAL in sleeps under Python 3.11 here.)
"""

import datetime as _dt
import os as _os

_offset = float(_os.environ.get("SKIPLOCK_TEST_CLOCK_OFFSET", "0") or 0)
if _offset:
    import time_machine as _tm

    _travel = _tm.travel(_dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=_offset),
                         tick=True)
    _travel.start()
