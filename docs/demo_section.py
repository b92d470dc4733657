"""Regenerate the run-written part of docs/simulator.md, "Reading the demo".

    python docs/demo_section.py          # rewrite the section (and docs/img/demo.png)
    python docs/demo_section.py --check  # exit 1 if the section differs from the run

The section lies between the two marker lines below in docs/simulator.md;
its text is :func:`powergrid.sim.story.markdown` of the run ``powergrid demo``
makes (the same scenario and seed), so every figure in it comes from the run.
``tests/test_simulate.py`` checks that the file matches.
"""

from __future__ import annotations

import sys
from pathlib import Path

from powergrid.cli.simulate import DEMO
from powergrid.sim.plot import PlotUnavailable, plot
from powergrid.sim.runner import SimResult, Simulation
from powergrid.sim.scenario import parse_scenario
from powergrid.sim.story import markdown

DOC = Path(__file__).resolve().parent / "simulator.md"
IMAGE = DOC.parent / "img" / "demo.png"
BEGIN = "<!-- begin: written by `python docs/demo_section.py` from the demo run; do not edit -->"
END = "<!-- end of the part written by docs/demo_section.py -->"


def demo_run() -> SimResult:
    """The run `powergrid demo` makes (default seed)."""
    return Simulation(parse_scenario(DEMO, source="demo"), capture=True).run()


def section(result: SimResult) -> str:
    """The text between the markers, for ``result``."""
    return f"{BEGIN}\n\n{markdown(result)}\n{END}"


def current(text: str) -> str:
    """The marked section of ``text`` (raises ValueError if a marker is missing)."""
    start = text.index(BEGIN)
    end = text.index(END, start) + len(END)
    return text[start:end]


def main(argv: list[str]) -> int:
    result = demo_run()
    text = DOC.read_text()
    new = section(result)
    if "--check" in argv:
        same = current(text) == new
        print("docs/simulator.md matches the demo run" if same else "docs/simulator.md is stale")
        return 0 if same else 1
    DOC.write_text(text.replace(current(text), new))
    print(f"wrote {DOC}")
    try:
        print(f"wrote {plot(result, IMAGE)}")
    except PlotUnavailable:
        print("matplotlib is not installed: docs/img/demo.png not redrawn")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
