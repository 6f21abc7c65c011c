"""Before the GPU-hours: a dress rehearsal of a grid and the cost plan of running it.

- :func:`rehearse` (``bob rehearse GRID``): every distinct code path of a grid in miniature, on format-faithful
  stand-ins of its datasets (:mod:`bobkit.rehearsal.standins`) read by the real loaders, with random-weight twins
  of its backbones; every architecture also at the cells' real input sizes on the meta device.
- :func:`bobkit.rehearsal.plan.plan_grid` (``bob plan GRID``): passes, images, GPU-hours and peak memory per
  task and in total, and the saving against the paper's way of running it.
"""

from bobkit.rehearsal.cells import Outcome
from bobkit.rehearsal.runner import Rehearsal, format_table, rehearse
from bobkit.rehearsal.standins import STANDINS, StandIn, layout_source, standin_names, write_standins

__all__ = ["Outcome", "Rehearsal", "STANDINS", "StandIn", "format_table", "layout_source", "rehearse",
           "standin_names", "write_standins"]
