"""Faithful local stand-ins for Raspberry Pi's apt repository and Raspberry Pi OS images.

    from fakes.rpi import make_repo, make_raspios_image

See fake_rpi_repo.py and fake_raspios.py. Nothing here touches the network.
"""

from ._payloads import CM5_DTBS, FLAVOURS, KERNEL_ABI, KERNEL_DEB_VERSION, kernel_version
from .fake_raspios import DISK_ID, IMAGE_DATE, RaspiosLayout, make_raspios_image
from .fake_rpi_repo import RpiRepo, make_repo

__all__ = [
    "CM5_DTBS",
    "DISK_ID",
    "FLAVOURS",
    "IMAGE_DATE",
    "KERNEL_ABI",
    "KERNEL_DEB_VERSION",
    "RaspiosLayout",
    "RpiRepo",
    "kernel_version",
    "make_raspios_image",
    "make_repo",
]
