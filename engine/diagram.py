"""The state diagram, generated from the transitions table so the README never drifts from it.

`python -m taskwatcher.engine.diagram --mermaid` (or `--dot` for Graphviz).
"""

from __future__ import annotations

import argparse

from taskwatcher.engine.lifecycle import (
    FINAL_STATUSES,
    STARTED_STATUSES,
    THRESHOLDS,
    TRANSITIONS,
    Status,
)

GROUP = "started"
GROUP_LABEL = "graded by heartbeat age f = (now - last heartbeat) / timeout"
NO_FEEDBACK_NOTE = "a task without feedback stays RUNNING until f ≥ 1"


def _band(status: Status) -> str:
    """The heartbeat-age band that `health` maps to `status`, for edge labels."""
    lower = next(threshold for threshold, graded in THRESHOLDS if graded is status)
    upper = next((threshold for threshold, _ in THRESHOLDS if threshold > lower), None)
    return f"f ≥ {lower:g}" if upper is None else f"{lower:g} ≤ f < {upper:g}"


def diagram_edges() -> list[tuple[str, str, str]]:
    """(source, dest, label) per drawn edge; a trigger allowed from every started state and
    leaving them is drawn once from the group (and from any other state it leaves)."""
    edges = []
    for transition in TRANSITIONS:
        sources = transition["source"]
        sources = [sources] if isinstance(sources, Status) else list(sources)
        dest = transition["dest"]
        label = transition["trigger"]
        if "conditions" in transition:
            label = f"{label} when {_band(dest)}"
        if set(STARTED_STATUSES) <= set(sources) and dest not in STARTED_STATUSES:
            sources = [GROUP, *(source for source in sources if source not in STARTED_STATUSES)]
        edges.extend((str(source), str(dest), label) for source in sources)
    return edges


def to_dot() -> str:
    """Graphviz DOT: the started states in one cluster, final states double-circled."""
    cluster = "cluster_" + GROUP
    lines = [
        "digraph taskwatcher {",
        "    rankdir=LR;",
        "    compound=true;",
        '    node [shape=box, style=rounded, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
        f"    {Status.RESERVED};",
        f"    subgraph {cluster} {{",
        f'        label="{GROUP}: {GROUP_LABEL}\\n{NO_FEEDBACK_NOTE}";',
        *(f"        {status};" for status in STARTED_STATUSES),
        "    }",
        *(f"    {status} [shape=doublecircle];" for status in Status if status in FINAL_STATUSES),
    ]
    for source, dest, label in diagram_edges():
        if source == GROUP:
            lines.append(f'    {STARTED_STATUSES[0]} -> {dest} [label="{label}", ltail={cluster}];')
        else:
            lines.append(f'    {source} -> {dest} [label="{label}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid() -> str:
    """Mermaid stateDiagram-v2 (GitHub renders it): the started states as a composite state."""
    inside, outside = [], []
    for source, dest, label in diagram_edges():
        if source in STARTED_STATUSES:
            inside.append(f"        {source} --> {dest} : {label}")
        elif dest in STARTED_STATUSES:
            if (entry := f"        [*] --> {dest}") not in inside:
                inside.insert(0, entry)
            outside.append(f"    {source} --> {GROUP} : {label}")
        else:
            outside.append(f"    {source} --> {dest} : {label}")
    finals = [status for status in Status if status in FINAL_STATUSES]
    return (
        "\n".join(
            [
                "stateDiagram-v2",
                "    direction LR",
                f"    [*] --> {Status.RESERVED}",
                f"    state {GROUP} {{",
                *inside,
                "    }",
                f"    note right of {GROUP}",
                f"        {GROUP_LABEL}",
                f"        {NO_FEEDBACK_NOTE}",
                "    end note",
                *outside,
                "    classDef final stroke-width:3px",
                *(f"    class {status} final" for status in finals),
            ]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    """Print the state diagram, generated from the transitions table."""
    parser = argparse.ArgumentParser(
        prog="python -m taskwatcher.engine.diagram", description=main.__doc__
    )
    formats = parser.add_mutually_exclusive_group(required=True)
    formats.add_argument("--dot", action="store_const", const=to_dot, dest="render")
    formats.add_argument("--mermaid", action="store_const", const=to_mermaid, dest="render")
    print(parser.parse_args(argv).render(), end="")


if __name__ == "__main__":
    main()
