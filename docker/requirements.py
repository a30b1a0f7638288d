"""Print a pyproject's dependencies and its extras' (``pyproject.toml[a,b]``), one a line.

The image builds install these first, in a layer keyed on pyproject.toml alone, and the
project itself afterwards with ``--no-deps``: editing the code then rebuilds a few seconds of
image instead of every dependency. scripts/wheelhouse.sh uses it too. Standard library only.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    project = tomllib.loads(Path(pyproject).read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise SystemExit(f"unknown extras {unknown}; {pyproject} has {sorted(optional)}")
    found = list(project.get("dependencies", []))
    for extra in extras:
        found += [r for r in optional[extra] if r not in found]
    return found


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: requirements.py 'PYPROJECT[EXTRA,...]'")
    path, _, rest = argv[0].partition("[")
    extras = [e.strip() for e in rest.rstrip("]").split(",") if e.strip()]
    print("\n".join(requirements(path, extras)))


if __name__ == "__main__":
    main(sys.argv[1:])
