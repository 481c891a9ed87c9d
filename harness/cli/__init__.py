"""The `netharness` command: the only place that prints and exits (`main.py`), with its
larger commands in their own modules, loaded when run."""
