from rtune_ds.cli import entry

entry()
