"""The embedded AWS emulator: moto server + a compute environment of local processes.

`batchexec local` (server.py) serves it; `EmbeddedEmulator` (embedded.py) starts a private
one for an executor that was given no stack and no endpoint. Importing this package is
cheap: moto is imported only by the server process.
"""

from .embedded import (
    EmbeddedEmulator,
    EmulatorNotInstalledError,
    EmulatorStartError,
    require_emulator_extra,
)

__all__ = [
    "EmbeddedEmulator", "EmulatorNotInstalledError", "EmulatorStartError",
    "require_emulator_extra",
]  # fmt: skip
