"""One exception root. User errors carry the one-line message the CLI prints."""


class SdgenError(Exception):
    """Base of every error sdgen raises on purpose."""


class UserError(SdgenError):
    """Bad input from a person: the message says what is wrong and how to fix it."""


class RequestError(UserError):
    """A request (YAML file or CLI options) breaks the schema."""


class DaemonRunning(UserError):
    """Another daemon already owns this data directory."""


class EngineError(SdgenError):
    """The image engine failed. `transient` says whether a retry can help."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class SettingError(UserError, EngineError):
    """A bad SDGEN_*/ADSP_* environment variable (sdgen/settings.py). A UserError, so a
    command prints its one line and exits 2; an EngineError that no retry can help, so a
    worker that meets one fails its ticket with the line as the reason."""

    def __init__(self, message: str):
        super().__init__(message, transient=False)
