"""Stop signals inside a run (loradora/stops.py); tests/test_faults.py sends them to a real run."""

import signal

import pytest

from loradora.stops import Interrupted, Received, stop_on_signals


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_raises_interrupted_and_the_handlers_are_put_back(signum, code):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as stopped:
        with stop_on_signals():
            signal.raise_signal(signum)  # handled in this thread before the next line runs
            pytest.fail("the signal did not stop the block")
    assert (stopped.value.name, stopped.value.exit_code) == (signal.Signals(signum).name, code)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_second_stop_signal_does_not_cut_the_first_short():
    marked = False
    with pytest.raises(Interrupted):
        with stop_on_signals():
            try:
                signal.raise_signal(signal.SIGTERM)
            except Interrupted:
                signal.raise_signal(signal.SIGINT)  # while the summary is being marked: ignored
                marked = True
                raise
    assert marked


def test_a_signal_ignored_when_the_run_started_stays_ignored():
    # A job started with `&` from a script runs with SIGINT ignored; Ctrl-C in the terminal is not for it.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_on_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_python_s_own_ctrl_c_is_sigint():
    assert Received().stop(KeyboardInterrupt()).exit_code == 130


def test_a_stop_turned_into_a_plain_keyboard_interrupt_keeps_its_signal():
    # Regression: Ray's get turns the handler's exception into a KeyboardInterrupt of its own, and
    # a SIGTERM with the Ray launcher exited 130, "interrupted by SIGINT".
    with pytest.raises(KeyboardInterrupt) as stopped:
        with stop_on_signals() as received:
            try:
                signal.raise_signal(signal.SIGTERM)
            except Interrupted:
                raise KeyboardInterrupt from None
    assert type(stopped.value) is KeyboardInterrupt and received.stop(stopped.value).exit_code == 143
