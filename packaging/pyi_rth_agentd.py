"""PyInstaller runtime hook for the frozen agentd: runs in the Python process before agentd.

A one-file build is two processes: the bootloader, which systemd started (its main PID), and
this child, which the bootloader started after unpacking the bundle. The bootloader is a
transparent wrapper (it forwards signals and passes the exit status through), so hand over
what was addressed to it:

- systemd names the process a variable is for by PID (``$LISTEN_PID`` for socket activation,
  ``$WATCHDOG_PID`` for the watchdog): when that is the bootloader, it now names us.
- The bootloader points ``$LD_LIBRARY_PATH`` into the unpacked bundle (keeping the original
  in ``$LD_LIBRARY_PATH_ORIG``). This process's dynamic loader read it at start and keeps it,
  so restoring the original here changes nothing for us, and every program a plugin starts
  (the ``command``/``exec`` plugins, shell hooks) runs with the system's libraries instead of
  the bundle's.
"""

import os


def _hand_over() -> None:
    parent = str(os.getppid())
    for var in ("LISTEN_PID", "WATCHDOG_PID"):
        if os.environ.get(var) == parent:
            os.environ[var] = str(os.getpid())
    original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is not None:
        os.environ["LD_LIBRARY_PATH"] = original
    else:
        os.environ.pop("LD_LIBRARY_PATH", None)


_hand_over()
del _hand_over
