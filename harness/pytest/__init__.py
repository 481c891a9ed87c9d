"""The pytest plugin (`plugin.py`, registered as `pytest11`): the `lab` fixture, topology
files collected as checks (`expect.py`), and failure reports with a lab's state
(`observe.py`)."""
