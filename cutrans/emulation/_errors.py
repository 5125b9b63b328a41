"""Exceptions and warnings of the CPU emulation (shared by the build and the launcher)."""


class BuildError(RuntimeError):
    """g++ failed, or its output cannot be used safely; the message says why."""


class EmulationError(RuntimeError):
    """A kernel failed under CPU emulation (deadlock, divergent barrier, bad launch, ...), or a
    module cannot be run safely in this process (static shared memory outside its writable
    segments, sanitizer runtime missing)."""


class ToolchainWarning(UserWarning):
    """The C++ toolchain works but with a limitation (e.g. it links libstdc++ statically)."""
