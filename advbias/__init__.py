"""advbias: adversarial perceptual-bias experiments end to end.

This small package belongs to no stage. It holds what the stages share without
importing each other (docs/architecture.md):

- :mod:`advbias.cli` - the ``advbias`` command line root (``python -m advbias`` alike);
- :mod:`advbias.errors` - :class:`~advbias.errors.InputError`, the one user-error type (and its
  :class:`~advbias.errors.CLIError`);
- :mod:`advbias.manifest` - the stimulus manifest, the file between ``stimuli`` and ``experiment``;
- :mod:`advbias.export` - the trial export, the file between ``experiment`` and ``analysis``;
- :mod:`advbias.client` - a participant that takes a study over the HTTP API.

Importing it is cheap: no torch, Flask or pandas at module level.
"""
__version__ = "0.1.0"
