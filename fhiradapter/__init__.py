"""fhiradapter: read FHIR R4 trial data, apply the thalidomide-HCC protocol, report and write back results."""

from importlib.util import find_spec

__version__ = "0.1.0"


def build() -> str:
    """``compiled`` when the hot modules are mypyc extensions (a wheel install, see hatch_build.py), else ``python``."""
    spec = find_spec("fhiradapter.core.mappers")
    origin = (spec.origin or "") if spec else ""
    return "python" if origin.endswith(".py") else "compiled"
