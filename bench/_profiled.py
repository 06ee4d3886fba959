"""Run a Python module or script under cProfile and write the profile however the
process ends: ``voiceslot serve`` leaves through ``os._exit`` (see its shutdown), and the
echo servers die by SIGTERM, both of which skip ``python -m cProfile``'s dump.

    python bench/_profiled.py OUT.prof -m voiceslot serve ...
    python bench/_profiled.py OUT.prof script.py ...
"""

from __future__ import annotations

import cProfile
import os
import runpy
import signal
import sys
from typing import Any, NoReturn


def main() -> None:
    out, *target = sys.argv[1:]
    profile = cProfile.Profile()
    real_exit = os._exit

    def dump_and_exit(code: int) -> NoReturn:
        profile.disable()
        profile.dump_stats(out)
        real_exit(code)

    def on_term(signum: int, frame: Any) -> None:
        dump_and_exit(0)

    os._exit = dump_and_exit  # type: ignore[assignment]
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, on_term)  # a server that installs its own replaces it
    if target[0] == "-m":
        sys.argv = [target[1], *target[2:]]
        profile.enable()
        runpy.run_module(target[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = target
        profile.enable()
        runpy.run_path(target[0], run_name="__main__")
    dump_and_exit(0)


if __name__ == "__main__":
    main()
