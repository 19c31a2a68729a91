"""kolm: compile a narrow task into a small, signed model file you own."""

__version__ = "0.1.0"
