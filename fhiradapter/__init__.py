"""fhiradapter: read FHIR R4 trial data, apply the thalidomide-HCC protocol, report and write back results."""

__version__ = "0.1.0"
