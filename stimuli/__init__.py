"""Stimulus sets: from a folder of photos to a verified, self-describing adversarial set.

>>> import stimuli
>>> setdir = stimuli.generate_set("builtin", [("cat", "truck")], [2, 16], out="sets/demo", steps=20, limit=4).path
>>> stimuli.verify_set(setdir).ok
True
>>> stimuli.observe_set(setdir, "lite2")   # setdir / "observers.csv": models take the trials
>>> stimuli.write_report(setdir)   # setdir / "report.html"

The functions are imported lazily so that importing this package (which the ``advbias``
command line does) does not import torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from stimuli.generate import SetSummary, generate_set
    from stimuli.observe import observe_set
    from stimuli.report import write_report
    from stimuli.verify import VerifyResult, verify_set

__all__ = ["generate_set", "observe_set", "verify_set", "write_report", "SetSummary", "VerifyResult"]

_WHERE = {
    "generate_set": "stimuli.generate",
    "SetSummary": "stimuli.generate",
    "observe_set": "stimuli.observe",
    "verify_set": "stimuli.verify",
    "VerifyResult": "stimuli.verify",
    "write_report": "stimuli.report",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'stimuli' has no attribute {name!r}")
