"""kolm: compile a narrow task into a small, signed model file you own.

`kolm.load(path)` and `kolm.compile(...)` are the Python API (`kolm.api`), imported
on first use so that `import kolm` stays light (no torch, no llama.cpp).
"""

__version__ = "0.1.0"
__all__ = ["Model", "compile", "load", "__version__"]


def __getattr__(name: str):
    if name in ("load", "compile", "Model"):
        from kolm import api

        return getattr(api, name)
    raise AttributeError(f"module 'kolm' has no attribute {name!r}")
