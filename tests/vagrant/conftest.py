"""One libvirtd and one box for every lab in tests/vagrant (see vagrantlib.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.vagrant import vagrantlib


@pytest.fixture(scope="package")
def vagrant_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[vagrantlib.Host]:
    yield from vagrantlib.host(tmp_path_factory.mktemp("vagrant"))
