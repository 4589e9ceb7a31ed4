"""`uniobs compare`: one function in several shrink-wraps (unikernels, containers), side by side.

- `function`: function definitions (FUNCTION.toml) and their instances.
- `comparison`: measuring each side's launches; the document.
- `results`: the document's schema, load and dump.
- `surface`: image and runtime attack surface.
- `report`: terminal, Markdown, SVG and HTML renderings, and diffs.
"""
