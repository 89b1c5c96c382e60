"""The project's exceptions. One root, so a caller can catch everything of ours.

    StreamrecError
    ├── ConfigError          settings or the dev stack are unusable
    ├── DevStackError        the embedded broker or Redis could not start
    ├── StateError           the Redis state could not be read or written
    ├── InputFormatError     an input file (CSV/JSONL replay) cannot be read
    ├── ArchiveError         the event archive cannot be written or read
    ├── BundleError          a model bundle is missing, corrupt or incompatible
    │   └── ChecksumMismatch a bundle file's sha256 differs from its manifest
    ├── ExperimentError      an experiment record is invalid, missing or in the way
    └── ServingError         the model server could not do what was asked
        ├── NoModel          no version is loaded yet (a server waiting for the first)
        ├── RequestRejected  the server answered a client's request with an error status
        └── ServersUnavailable  no server answered a client's request in its attempts

Bad events are not exceptions: `streamrec.events.parse_event` returns a typed
`Rejection` instead, which the stream turns into a DLQ record.
"""


class StreamrecError(Exception):
    """Root of every exception streamrec raises on purpose."""


class ConfigError(StreamrecError):
    """Settings or the dev stack description are missing or inconsistent."""


class DevStackError(StreamrecError):
    """The embedded broker or Redis could not be started, found or stopped."""


class StateError(StreamrecError):
    """Redis state could not be read or written."""


class InputFormatError(StreamrecError):
    """A replay file is not in the format it was said to be in."""


class ArchiveError(StreamrecError):
    """The event archive folder cannot be written or read."""


class BundleError(StreamrecError):
    """A model bundle or registry entry is missing, corrupt or incompatible."""


class ChecksumMismatch(BundleError):
    """A file in a bundle does not hash to the sha256 its manifest records."""


class ExperimentError(StreamrecError):
    """An experiment cannot be started, read, stopped or promoted as asked."""


class ServingError(StreamrecError):
    """The model server could not do what was asked (no model to serve, nothing to roll back)."""


class NoModel(ServingError):
    """No model version is loaded yet (a server started before the registry had one)."""


class RequestRejected(ServingError):
    """An HTTP request to the model server got an error status; `detail` says why."""

    def __init__(self, status_code: int, detail: object) -> None:
        super().__init__(f"model server answered {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class ServersUnavailable(ServingError):
    """Every attempt of a client's request failed to reach a server (refused, reset, timed out)."""
