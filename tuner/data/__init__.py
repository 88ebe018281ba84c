"""Relevance data: row schemas, loaders, validation, group sampling."""

from tuner.data.beir import BeirData, DataError, load_beir
from tuner.data.groups import LoadResult, load_groups, read_groups, split_groups, write_groups
from tuner.data.schema import Group

__all__ = [
    "BeirData",
    "DataError",
    "Group",
    "LoadResult",
    "load_beir",
    "load_groups",
    "read_groups",
    "split_groups",
    "write_groups",
]
