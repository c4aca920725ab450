"""Fixtures of the driver contract suite (the suite itself: test_driver_contract.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cumulo.domain.arch import Arch


@pytest.fixture(scope="session")
def tiny_image_x86_64() -> Path:
    """The built-in tiny image dir (vmlinuz, initrd.img, rootfs.qcow2, image.json)."""
    if shutil.which(Arch.X86_64.qemu_binary) is None:
        pytest.skip(f"{Arch.X86_64.qemu_binary} is not installed")
    override = os.environ.get("CUMULO_TEST_TINY_IMAGE")  # a prebuilt image dir (debugging)
    if override:
        image = Path(override)
    else:
        try:
            from cumulo.images.tiny import ensure_tiny_image
        except ImportError as exc:
            pytest.skip(f"qemu contract tests need cumulo.images.tiny.ensure_tiny_image: {exc}")
        image = ensure_tiny_image(Arch.X86_64)
    return image
