"""Write the settings table into README.md from broker.config (``--check`` fails on drift)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.config import Settings, setting_fields

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def render() -> str:
    defaults = Settings()
    rows = ["| setting | env | default | meaning |", "|---|---|---|---|"]
    for f in setting_fields():
        value = getattr(defaults, f.name)
        shown = "—" if value is None else f"`{value}`"
        rows.append(f"| `{f.name}` | `BROKER_{f.name.upper()}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(rows)


def main() -> None:
    text = README.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    new = f"{head}{START}\n{render()}\n{END}{tail}"
    if "--check" in sys.argv:
        if new != text:
            sys.exit("README settings table is stale: run `python scripts/settings_table.py`")
        return
    README.write_text(new)


if __name__ == "__main__":
    main()
