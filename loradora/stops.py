"""Stops asked for from outside the run: Ctrl-C (SIGINT), and SIGTERM, which Slurm, Kubernetes,
Ray, systemd and ``timeout`` send to stop a job, end a run the same way.

Within ``stop_on_signals`` either signal raises ``Interrupted`` in the main thread, wherever it
is (training, a Ray ``get``, a file write), so the run keeps its finished phases and marks its
summary; it exits with 128 + the signal's number, as a shell reports a process the signal ended.
"""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived. A KeyboardInterrupt, so what cleans up after Ctrl-C (a temporary file's
    removal, Ray's cancelling of a ``get``) cleans up after SIGTERM too."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Received:
    """The stop signal that arrived within ``stop_on_signals``, if any."""

    def __init__(self):
        self.signum: int | None = None

    def stop(self, error: KeyboardInterrupt) -> Interrupted:
        """``error`` as the ``Interrupted`` of the signal that raised it. Code that catches ours and
        raises a KeyboardInterrupt of its own (Ray's ``get`` does, from its C++ signal check) loses
        which signal it was; the handler noted it here. With no signal noted, it was Ctrl-C, through
        Python's own handler."""
        if isinstance(error, Interrupted):
            return error
        return Interrupted(self.signum if self.signum is not None else signal.SIGINT)


@contextmanager
def stop_on_signals() -> Iterator[Received]:
    """SIGINT and SIGTERM raise ``Interrupted`` within; the handlers before are back on exit.

    Installed after anything that sets handlers of its own (``ray.init`` makes SIGTERM call
    ``sys.exit``, which would skip the run's bookkeeping). A signal the process was started with
    ignored stays ignored: a job started with ``&`` or ``nohup`` keeps ignoring Ctrl-C. After the
    first stop signal, further ones are ignored, so that a second SIGTERM (``timeout``, then Slurm)
    cannot cut short the marking of the summary; SIGKILL still ends the process.
    """
    received = Received()
    if threading.current_thread() is not threading.main_thread():  # only it may set handlers
        yield received
        return
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    handled = [signum for signum, handler in before.items() if handler is not signal.SIG_IGN]

    def stop(signum, frame):
        for other in handled:
            signal.signal(other, signal.SIG_IGN)
        received.signum = signum
        raise Interrupted(signum)

    for signum in handled:
        signal.signal(signum, stop)
    try:
        yield received
    finally:
        for signum in handled:
            # None: a handler set outside Python, which cannot be put back; the default is the nearest
            signal.signal(signum, signal.SIG_DFL if before[signum] is None else before[signum])
