"""An emulated Flowise (1.6.2 to 3.1.4 on the wire): a test double, also served by `serve --demo`.

Not part of the gateway's data path; nothing outside tests, the benchmark and `--demo` imports it.
"""

from .fake_flowise import (
    DEMO_CHATFLOW_ID,
    KEYED_CHATFLOW_ID,
    NONSTREAMING_CHATFLOW_ID,
    Emulator,
    EmulatorConfig,
    create_emulator_app,
)

__all__ = [
    "DEMO_CHATFLOW_ID",
    "KEYED_CHATFLOW_ID",
    "NONSTREAMING_CHATFLOW_ID",
    "Emulator",
    "EmulatorConfig",
    "create_emulator_app",
]
