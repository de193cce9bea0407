"""The one progress callback type of long library calls (quantize, evaluate, compare, sensitivity).

`progress(stage, done, total)`: `stage` says what is being worked on (a tensor name while quantizing,
"reference" or "candidate" while evaluating, a step of a comparison, a sensitivity group), `done` of
`total` units of that stage are finished. Callers (the CLI) decide how to show it; the library never
prints progress itself.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]
