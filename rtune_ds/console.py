"""What the console shows: the libraries' log levels and warnings (quiet by default; --verbose
or RTUNE_LOG_LEVEL brings their lines back). rtune's own progress bar and errors always show."""
from __future__ import annotations

import os
import sys

LOG_LEVELS = ("debug", "info", "warning", "error")


class _AtLeast:
    """A logging filter: records at `level` or above; when quiet, on ranks other than 0, not the
    accelerator DeepSpeed picked (every rank of a node would say it again)."""

    level = 0

    def filter(self, record) -> bool:
        return record.levelno >= self.level and not (
            self.level >= 30 and os.environ.get("RANK", "0") != "0"
            and record.filename == "real_accelerator.py")


_DEEPSPEED_FILTER = _AtLeast()


def console(level: str) -> None:
    """What the libraries print. 'warning' (the default): DeepSpeed's warnings and errors;
    transformers' and datasets' errors only (their load reports and progress bars are noise here);
    no notices that a library calls a deprecated API. rtune's own progress bar stays.
    'info' (--verbose) and 'debug' bring the libraries' lines back. Launches started from here
    inherit it through RTUNE_LOG_LEVEL."""
    import logging
    import warnings

    os.environ["RTUNE_LOG_LEVEL"] = level
    numeric = getattr(logging, level.upper())
    ds = logging.getLogger("DeepSpeed")  # deepspeed.utils.logger, before or after its import
    _DEEPSPEED_FILTER.level = numeric
    if _DEEPSPEED_FILTER not in ds.filters:
        ds.addFilter(_DEEPSPEED_FILTER)
    quiet = {"TRANSFORMERS_VERBOSITY": "error", "DATASETS_VERBOSITY": "error",
             "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    if numeric < logging.WARNING:  # DeepSpeed sets its logger to WARNING when it is imported
        from deepspeed.utils.logging import set_log_level_from_string

        set_log_level_from_string(level)
        # a quiet rtune earlier in this process (tests, the demo's one launch) left these behind
        # for every process started from here
        for var, value in quiet.items():
            if os.environ.get(var) == value:
                del os.environ[var]
        _libraries(level)
        return
    for var, value in quiet.items():  # read when the libraries are imported; a user's own wins
        os.environ.setdefault(var, value)
    _libraries("error")
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category,
                                module=r"(transformers|deepspeed|peft|datasets|torch)\b")


def _libraries(level: str) -> None:
    """transformers' and datasets' verbosity and progress bars, where this process imported them
    already (a fresh import reads the environment)."""
    bars = level != "error"
    if "transformers" in sys.modules:
        import transformers

        transformers.logging.set_verbosity(getattr(transformers.logging, level.upper()))
        (transformers.logging.enable_progress_bar if bars
         else transformers.logging.disable_progress_bar)()
    if "datasets" in sys.modules:
        import datasets

        datasets.logging.set_verbosity(getattr(datasets.logging, level.upper()))
        (datasets.enable_progress_bars if bars else datasets.disable_progress_bars)()
