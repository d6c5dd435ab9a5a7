"""Registry entry point of ``dsran-bert`` (the registry imports one ``FAMILY`` per module; the definitions live
in :mod:`vsrt.models.dsran_family`)."""

from vsrt.models.dsran_family import FAMILY_BERT as FAMILY

__all__ = ["FAMILY"]
