"""Jinja templates of the participant and admin pages; shipped in the wheel as ``experiment.templates``."""
