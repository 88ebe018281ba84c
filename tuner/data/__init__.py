"""Relevance data: row schemas, loaders, validation, group sampling."""

from tuner.data.beir import BeirData, DataError, load_beir
from tuner.data.schema import Group

__all__ = ["BeirData", "DataError", "Group", "load_beir"]
