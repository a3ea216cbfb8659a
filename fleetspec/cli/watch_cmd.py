"""`fleetspec watch`: apply the fleet file, then keep the running fleet matching it."""

from __future__ import annotations

import datetime
import os
import pathlib
import signal

import click

from fleetspec.cli import views


def _stamped(text: str, err: bool = False) -> None:
    click.echo(f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {text}", err=err)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--interval", type=click.FloatRange(min=0.2), default=10.0, show_default=True, metavar="SECONDS",
              help="Re-observe the whole fleet this often, to catch drift that sends no event "
                   "(an adapter unloaded through the engine's API).")
@click.option("--down-on-exit", is_flag=True, help="Tear the fleet down when watch stops (Ctrl-C, SIGTERM).")
@click.option("--once", is_flag=True, help="Run one reconcile cycle and exit (1 if anything failed).")
def watch(file: str, interval: float, down_on_exit: bool, once: bool) -> int:
    """Apply FILE, then keep the fleet matching it: every save is applied, and dead containers,
    crashed engines and unloaded adapters are repaired. Ctrl-C stops watching and leaves the fleet
    running (unless --down-on-exit)."""
    from fleetspec.watch import loop, reconciler, sources

    _refuse_unwatchable(file)
    waker = loop.QueueWaker()
    settings = loop.Settings(interval_s=interval, once=once, down_on_exit=down_on_exit,
                             file_label=pathlib.Path(file).name)
    output = loop.Output(line=_stamped, diagnostics=views.print_diagnostics,
                         progress=lambda text: _stamped(f"  {text}", err=True))
    watched = None if once else sources.Sources(waker.post, file)
    controller = loop.Loop(reconciler.SessionReconciler(file), waker, output, settings,
                           on_spec=watched.retarget if watched else lambda _: None)

    def on_signal(signum, _frame) -> None:
        if controller.stop_reason is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, even in the middle of a step
        name = signal.Signals(signum).name
        controller.request_stop(name)
        waker.post(loop.Wake(loop.SIGNAL, name))
        if controller.busy:  # a raw write: a signal handler must not re-enter a buffered stream
            os.write(2, f"{name}: stopping after the current step; press Ctrl-C again to stop at once.\n".encode())

    if not once:
        _stamped(f"Watching {file} (re-observing every {interval:g} s); Ctrl-C stops watching"
                 + (" and tears the fleet down." if down_on_exit else " and leaves the fleet running."))
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return controller.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if watched is not None:
            watched.close()


def _refuse_unwatchable(file: str) -> None:
    """A fleet fleetspec cannot run itself (Kubernetes) is refused now, not reported on every save."""
    from fleetspec import errors
    from fleetspec.reconcile import session
    from fleetspec.spec import loading

    try:
        spec = loading.load_path(file).spec
    except errors.SpecError:
        return  # the loop reports it, located, and waits for a fix
    session.refuse_unmanaged(spec)
