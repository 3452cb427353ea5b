"""Ctrl-C that is not lost, for the command line.

Python turns SIGINT into a ``KeyboardInterrupt`` raised wherever the main thread happens to be.
When that is a garbage-collector callback, a ``__del__`` or a weakref callback (JAX runs one at
every collection: ``_xla_gc_callback``), Python prints "Exception ignored in ..." and drops the
exception, and the command goes on as if nothing had been pressed (seen: a fine-tuning run that
kept training after Ctrl-C). ``delivered_interrupts`` makes one Ctrl-C end the command whatever
it lands on: a dropped ``KeyboardInterrupt`` is not printed, and after the first SIGINT a
watcher thread raises it again every ``RETRY_S`` until the command has ended; a repeat that finds the interrupt already on its way out (being handled
or unwinding through ``finally``: the clean-up of what was being written) is ignored, so it
never cuts the clean-up short.
"""
import contextlib
import os
import signal
import sys
import threading

RETRY_S = 1.0  # the interrupt again after this long, if the command is still running


def _unwinding() -> bool:
    """Whether the main thread is handling a ``KeyboardInterrupt`` (an ``except`` or a ``finally``
    it runs through): the interrupt has been taken."""
    return isinstance(sys.exc_info()[1], KeyboardInterrupt)


@contextlib.contextmanager
def delivered_interrupts():
    """Within the block (main thread only), Ctrl-C raises ``KeyboardInterrupt`` until it is taken.
    The previous SIGINT handler is restored on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted, done, watcher = threading.Event(), threading.Event(), []

    def retry():
        while not done.wait(RETRY_S):
            os.kill(os.getpid(), signal.SIGINT)

    def on_sigint(signum, frame):
        if done.is_set() or _unwinding():
            return
        if not interrupted.is_set():
            interrupted.set()
            watcher.append(threading.Thread(target=retry, name="resnets-jax-interrupt", daemon=True))
            watcher[0].start()
        raise KeyboardInterrupt

    def unraisable(info):  # a dropped interrupt: raised again by the watcher, so not worth a traceback
        if not issubclass(info.exc_type, KeyboardInterrupt):
            previous_hook(info)

    previous, previous_hook = signal.signal(signal.SIGINT, on_sigint), sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        done.set()
        for t in watcher:  # no repeat after this: it would reach the restored handler
            t.join()
        signal.signal(signal.SIGINT, previous)
        # after a Ctrl-C the process is ending: an object the interrupt cut short in its clean-up
        # (seen: an asyncio loop closed half-way, whose __del__ then fails on a closed descriptor
        # when collected at exit) would print a traceback after "interrupted"; not worth one either
        sys.unraisablehook = _ignore if interrupted.is_set() else previous_hook


def _ignore(info) -> None:
    """An unraisable exception while a Ctrl-C ends the command: dropped."""
