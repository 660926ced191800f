"""Build fake filesystem roots that look like particular devices to the probe."""

from __future__ import annotations

from pathlib import Path


def write(root: Path, rel: str, content: bytes | str = b"") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def device_tree_model(root: Path, model: str, *, sysfs: bool = False) -> None:
    rel = "sys/firmware/devicetree/base/model" if sysfs else "proc/device-tree/model"
    write(root, rel, model.encode() + b"\x00")


def usb_device(root: Path, port: str, vendor: str, product: str) -> None:
    write(root, f"sys/bus/usb/devices/{port}/idVendor", vendor + "\n")
    write(root, f"sys/bus/usb/devices/{port}/idProduct", product + "\n")


def usb_root_hub(root: Path) -> None:
    """A Linux root hub plus an interface directory without ids, as on every real host."""
    usb_device(root, "usb1", "1d6b", "0002")
    (root / "sys/bus/usb/devices/1-0:1.0").mkdir(parents=True, exist_ok=True)


def jetson_nano(root: Path) -> Path:
    device_tree_model(root, "NVIDIA Jetson Nano Developer Kit")
    write(root, "etc/nv_tegra_release", "# R32 (release), REVISION: 7.1\n")
    return root


def coral_dev_board(root: Path) -> Path:
    device_tree_model(root, "Freescale i.MX8MQ Phanbein")
    write(root, "dev/apex_0")
    return root


def raspberry_pi(root: Path, model: str) -> Path:
    device_tree_model(root, model)
    return root


def nvidia_driver(root: Path) -> Path:
    write(
        root,
        "proc/driver/nvidia/version",
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.154.05\nGCC version: gcc 12\n",
    )
    return root
