"""The GPU side of the machine: is an NVIDIA GPU visible (a cheap check that skips GPU backends), and what the
report records about it: each GPU's name, compute capability and memory, the driver and the CUDA version it
supports, and what torch, ONNX Runtime and TensorRT were built for.

nvidia-smi is asked first because it needs no CUDA context, so the orchestrating process holds no GPU memory
that a backend's worker would then lack; torch only fills in the devices where nvidia-smi is missing (some
containers), and its `cuda.is_available()` opens no context either. On a machine without a GPU every field
says so ("no GPU" and why); that is a description, not an error.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import re
import shutil
import subprocess
from importlib import metadata
from typing import Any

QUERY = "name,compute_cap,memory.total,driver_version"
DEVICE_FILES = ("/dev/nvidia[0-9]*", "/dev/dxg")  # Linux GPUs; WSL's GPU device
ONNXRUNTIME_DISTRIBUTIONS = ("onnxruntime-gpu", "onnxruntime")
TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11")


def run_nvidia_smi(args: list[str]) -> tuple[str | None, str]:
    """(nvidia-smi's stdout, "") or (None, why it gave nothing)."""
    path = shutil.which("nvidia-smi")
    if path is None:
        return None, "nvidia-smi is not installed"
    try:
        done = subprocess.run([path, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"nvidia-smi failed ({type(e).__name__}: {e})"
    if done.returncode != 0:
        first = (done.stdout + done.stderr).strip().splitlines()[:1]
        return None, f"nvidia-smi failed (exit code {done.returncode}: {first[0] if first else 'no output'})"
    return done.stdout, ""


def parse_devices(csv_text: str) -> list[dict[str, Any]]:
    """Rows of `nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv,noheader,nounits`."""
    devices = []
    for line in csv_text.strip().splitlines():
        # GPU names hold no commas, so the last three fields split cleanly from the right.
        name, capability, memory, driver = (part.strip() for part in line.rsplit(",", 3))
        devices.append({
            "name": name,
            "compute_capability": None if capability.startswith("[") else capability,  # "[N/A]" on old drivers
            "memory_mib": int(memory) if memory.isdigit() else None,
            "driver_version": driver,
        })
    return devices


def parse_cuda_version(text: str) -> str | None:
    """The CUDA version the driver supports, from nvidia-smi's banner ("CUDA Version: 12.4")."""
    match = re.search(r"CUDA Version:\s*([\d.]+)", text)
    return match.group(1) if match else None


@functools.lru_cache(maxsize=1)  # one nvidia-smi call per process, however many backends ask
def nvidia_devices() -> tuple[tuple[dict[str, Any], ...], str]:
    """(the GPUs nvidia-smi lists, why none were found)."""
    out, why = run_nvidia_smi([f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"])
    if out is None:
        return (), why
    devices = tuple(parse_devices(out))
    return devices, "" if devices else "nvidia-smi lists no GPU"


def missing_gpu() -> str | None:
    """Why no NVIDIA GPU is visible here, or None when one may be (nvidia-smi lists one, or a device file exists)."""
    devices, why = nvidia_devices()
    if devices:
        return None
    if any(glob.glob(pattern) for pattern in DEVICE_FILES):
        return None  # a GPU without nvidia-smi (some containers): the backend's own load decides
    return f"no NVIDIA GPU is visible ({why}; no {' or '.join(DEVICE_FILES)} device)"


def installed(names: tuple[str, ...]) -> tuple[str, str] | None:
    """(distribution, version) of the first of `names` that is installed."""
    for name in names:
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def torch_cuda() -> dict[str, Any]:
    """torch's version, the CUDA it was built with (None: a CPU-only build) and whether it sees a GPU."""
    if importlib.util.find_spec("torch") is None:
        return {"installed": False}
    import torch

    info: dict[str, Any] = {"installed": True, "version": torch.__version__, "cuda": torch.version.cuda,
                            "available": torch.cuda.is_available()}
    if info["available"]:
        info["device_count"] = torch.cuda.device_count()
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def onnxruntime_build() -> dict[str, Any]:
    """The onnxruntime wheel (onnxruntime-gpu or the CPU one), its build line and execution providers."""
    import onnxruntime as ort

    package = installed(ONNXRUNTIME_DISTRIBUTIONS)
    build = getattr(ort, "get_build_info", None)
    return {"package": package[0] if package else None, "version": ort.__version__, "device": ort.get_device(),
            "providers": ort.get_available_providers(), "build_info": build() if build else None}


def describe() -> dict[str, Any]:
    """The report's GPU section: present or not (and why), devices, driver, CUDA, torch / ONNX Runtime / TensorRT."""
    devices, why = nvidia_devices()
    torch_info = torch_cuda()
    devices = [dict(d) for d in devices]
    if not devices and torch_info.get("available"):  # no nvidia-smi here, but torch reaches the GPUs
        import torch

        devices = [{"name": torch.cuda.get_device_name(i),
                    "compute_capability": "{}.{}".format(*torch.cuda.get_device_capability(i)),
                    "memory_mib": None, "driver_version": None} for i in range(torch.cuda.device_count())]
    banner = run_nvidia_smi([])[0] if devices else None
    tensorrt = installed(TENSORRT_DISTRIBUTIONS)
    cuda_python = installed(("cuda-python",))
    info = {
        "present": bool(devices),
        "devices": devices,
        "driver_version": devices[0]["driver_version"] if devices else None,
        "cuda_driver_version": parse_cuda_version(banner) if banner else None,
        "torch": torch_info,
        "onnxruntime": onnxruntime_build(),
        "tensorrt": tensorrt[1] if tensorrt else None,
        "cuda_python": cuda_python[1] if cuda_python else None,
    }
    if not devices:
        info["reason"] = missing_gpu() or f"no GPU found ({why}; torch sees none either)"
    return info
