"""The two ways a command fails: bad input (ConfigError, exit 2) and a run that cannot go on
(RunError, exit 3). Each carries one line that names the file, key or path at fault."""
from __future__ import annotations


class ConfigError(Exception):
    """A mistake in a RunConfig, a DeepSpeed JSON or an input path; the message names it."""


class RunError(Exception):
    """A run that cannot go on (a non-finite loss under train.nonfinite=stop, a write that failed);
    `rtune` exits 3. The last complete checkpoint stays the one `--resume auto` picks up."""

