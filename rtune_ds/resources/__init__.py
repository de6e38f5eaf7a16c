"""Files shipped inside the package (so a plain `pip install` has them): the stock DeepSpeed JSONs
(the top-level ds_configs/ of a checkout links here, for users to copy and edit) and the demo's
budgets."""
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS_CONFIGS = HERE / "ds_configs"
DEMO_BUDGETS = HERE / "demo.yaml"
