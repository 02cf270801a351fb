"""Rewrite the README's parameter table from the parameter table in the code.

Run after adding or changing a parameter (``make readme``); ``tests/test_params.py`` fails
while the two differ.
"""

from pathlib import Path

from pipeline.engine.params import describe_parameters

BEGIN, END = "<!-- parameters:begin -->\n", "<!-- parameters:end -->"

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
head, rest = text.split(BEGIN, 1)
_, tail = rest.split(END, 1)
readme.write_text(head + BEGIN + describe_parameters() + END + tail)
