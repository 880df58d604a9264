"""The error every user mistake raises: imported by modules that must not import the config
(``runtime``, which the config itself reads its device vocabulary from)."""


class ConfigError(ValueError):
    """A bad setting; its message is one line that says what to fix."""
