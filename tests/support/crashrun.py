"""Run the finalizer in a separate process and SIGKILL it at a named step (the crash tests).

python tests/crashrun.py CONFIG [--crash-at STEP] process|discard|reconcile [RECORDING_ID]
"""

from __future__ import annotations

import argparse
import os
import signal

from callconsent import config
from callconsent.app import App
from callconsent.recordings import finalizer as build_finalizer
from recorder.finalize.finalizer import FinalizerSettings


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("--crash-at")
    p.add_argument("action", choices=["process", "discard", "reconcile"])
    p.add_argument("recording", nargs="?")
    args = p.parse_args()

    def step(name: str) -> None:
        if name == args.crash_at:
            os.kill(os.getpid(), signal.SIGKILL)

    app = App.open(config.load(args.config))
    finalizer = build_finalizer(  # the daemon's own wiring, with the crash hook
        app,
        settings=FinalizerSettings(settle_s=3600, not_final_retries=()),
        step=step,
        allow_root=True,  # the test suite may run as root; the daemon never passes this
    )
    if args.action == "process":
        print(finalizer.process(args.recording))
    elif args.action == "discard":
        app.ledger.discard(args.recording, "consent_withdrawn")
    else:
        print(finalizer.reconcile(full=True))


if __name__ == "__main__":
    main()
