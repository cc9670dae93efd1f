"""Scripts, styles and icons of the pages; shipped in the wheel as ``experiment.static``."""
