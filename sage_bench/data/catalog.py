"""The registered data sets' names and environment labels, without torch.

Everything that only needs to know which data sets exist and what their environments are
called (the collector, the planner of a sweep) reads it here, so it starts without importing
torch; the data set classes take their ``ENVIRONMENTS`` from this table.
"""

from __future__ import annotations

# name -> environment labels in DomainBed's order (the index of a label is the environment's index)
ENVIRONMENTS: dict[str, list[str]] = {
    "RotatedDigits": ["0", "15", "30", "45", "60", "75"],
    "ColoredDigits": ["+90%", "+80%", "-90%"],
    "PACS": ["A", "C", "P", "S"],
    "VLCS": ["C", "L", "S", "V"],
    "OfficeHome": ["A", "C", "P", "R"],
    "TerraIncognita": ["L100", "L38", "L43", "L46"],
    "DomainNet": ["clip", "info", "paint", "quick", "real", "sketch"],
}

DATASET_NAMES: list[str] = list(ENVIRONMENTS)  # registry order
