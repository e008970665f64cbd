"""Locust's web UI over a replay: watching works, and its Stop button stops the replay like Ctrl-C.

Two things Locust's own UI assumes that a replay does not give it:
- Its pages parse the process's command line with Locust's argument parser (for the "extra options"
  panel). harness's own arguments are not Locust's: the parser exited the whole run. The UI parses an
  empty command line instead.
- Stop kills the users. The replay runs in its own greenlet (see `ReplayOnce`), so Stop only asks it to
  stop; legs already sent are waited for and recorded, and the run is reported as interrupted.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import gevent
import gevent.event

__all__ = ["STOPPED_FROM_UI", "ReplayOnce", "replay_user_class", "start_web_ui", "on_ui_stop"]

STOPPED_FROM_UI = "the Locust web UI (Stop)"


def start_web_ui(env: Any, host: str, port: int) -> Any:
    from locust.web import WebUI

    class ReplayWebUI(WebUI):
        def update_template_args(self) -> None:
            argv = sys.argv
            sys.argv = argv[:1]
            try:
                super().update_template_args()
            finally:
                sys.argv = argv

        def stop(self) -> None:
            # A Stop request on a master waits (up to a second) for the workers to report no users; the
            # replay can end first, and stopping the server then would leave the browser without an answer.
            gevent.joinall(self.stop_requests, timeout=5)
            super().stop()

    ui = ReplayWebUI(env, host, port)
    ui.stop_requests = []  # the greenlets of Stop requests that stopped the replay
    env.web_ui = ui
    return ui


def on_ui_stop(web_ui: Any, stop: Callable[[], bool]) -> None:
    """`stop()` when the runner is stopped from the UI. harness itself stops the runner only once the
    replay is over; `stop` then returns False and does nothing."""

    def listener(**_: Any) -> None:
        if stop():
            web_ui.stop_requests.append(gevent.getcurrent())

    web_ui.environment.events.test_stopping.add_listener(listener)


def replay_user_class(body: Callable[[Any], None]) -> type:
    """A Locust user class whose one task is `body(user)`, with no wait between runs."""
    from locust import User, constant, task

    class PairedReplayUser(User):
        wait_time = constant(0)

        @task
        def replay(self) -> None:
            body(self)

    return PairedReplayUser


class ReplayOnce:
    """The replay as the body of a Locust user, run once, in a greenlet of its own.

    The first user starts it and waits for it, so the UI shows one user while it runs; killing that user
    (Stop, or a Locust worker told to stop) leaves the replay running until it has stopped by itself.
    Users added later from the UI return at once: a second replay of the same schedule would send every
    request twice. What the replay raised is kept in `error` (a Locust task's exception is only logged)."""

    def __init__(self, replay: Callable[[], None], on_error: Callable[[BaseException], None] | None = None) -> None:
        self._replay = replay
        self._on_error = on_error
        self.greenlet: gevent.Greenlet | None = None
        self.finished = gevent.event.Event()
        self.error: BaseException | None = None

    def user_body(self) -> None:
        if self.greenlet is None:
            self.greenlet = gevent.spawn(self._run)
            self.finished.wait()

    def _run(self) -> None:
        try:
            self._replay()
        except Exception as exc:  # noqa: BLE001 - handed to whoever waits for the replay, see `error`
            self.error = exc
            if self._on_error is not None:
                self._on_error(exc)
        finally:
            self.finished.set()
