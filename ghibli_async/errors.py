"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input or setup; the message says what to do."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of a traceback: the message is the user's to act on; the
        code's lines would only hide it."""
        return [f"{type(self).__name__}: {self}"]


class ConfigError(UserError):
    """The config file is missing, unreadable or invalid."""


class MachineError(UserError):
    """The machine, not a file, failed (disk full, permissions, I/O error, read-only file system):
    the stage stops, its frames stay pending, and the CLI exits 1."""


class StateDamaged(UserError):
    """The state file is there but is not a readable ghibli_async state (empty, foreign, corrupt)."""


class NoInput(UserError):
    """The input folder holds no frame or video yet (`run --watch` waits for some)."""


class WorkDirBusy(UserError):
    """Another command holds the work dir's lock (a service waits for it between passes)."""
