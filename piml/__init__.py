"""piml: from bare Raspberry Pi boards to a verified ML platform."""

__version__ = "0.1.0"
