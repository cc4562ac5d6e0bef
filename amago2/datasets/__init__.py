"""Offline datasets in other formats: Minari datasets into amago2 trajectory files, and back.

`import_minari` and `export_minari` need the optional `minari` package
(`pip install -e ".[minari]"`); importing this package does not.
"""

from amago2.datasets.minari_export import export_minari
from amago2.datasets.minari_import import ImportSummary, import_minari

__all__ = ["ImportSummary", "export_minari", "import_minari"]
