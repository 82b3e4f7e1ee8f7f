"""Docstring examples that show usage run as doctests."""

import doctest
import importlib

import pytest

MODULES = ["retrievals.utils", "retrievals.data.io", "retrievals.evaluation.metrics", "retrievals.models.rankers.colbert",
           "retrievals.index.hybrid", "retrievals.pipelines.build_hn",
           "retrievals.models.embedding"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
