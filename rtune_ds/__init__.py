"""rtune_ds: a DeepSpeed-scaled trainer for recyclable tuning in continual pretraining."""
__version__ = "0.1.0"
