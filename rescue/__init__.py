"""queue-rescue: move deferred Postfix mail through an alternate smarthost."""

__version__ = "0.1.0"
