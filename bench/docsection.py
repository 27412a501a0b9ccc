"""Writes one script's section of docs/benchmarks.md, leaving the others alone.

Each benchmark script owns the text between `<!-- NAME:begin ... -->` and
`<!-- NAME:end -->`; running it again replaces just that part.
"""

import os
import re

HEADER = """# Benchmarks

Each section below is written by the script it names; run the script again
rather than editing by hand. Figures are from one machine of the kind the
project runs on (2 cores), measured in the same run as the reference they are
compared with.
"""


def replace_section(path, name, body, script):
    """Puts `body` (markdown, no markers) into section `name` of `path`."""
    section = (f"<!-- {name}:begin (written by {script}; run it again rather than editing) -->\n"
               f"{body.rstrip()}\n<!-- {name}:end -->\n")
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = HEADER
    pattern = re.compile(rf"<!-- {re.escape(name)}:begin.*?<!-- {re.escape(name)}:end -->\n", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
