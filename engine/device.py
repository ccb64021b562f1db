"""Where blocks of frames are calibrated and measured: the CPU, or an NVIDIA GPU through numba.cuda.

`resolve_device` turns the `device` setting ('cpu', 'cuda', 'auto') into 'cpu' or 'cuda' before
any work, and says which in one line. numba.cuda is imported only when a GPU is asked for or
looked for: importing it is slow, and the CPU path never does.

Under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, for tests) 'cuda' runs the GPU kernels as
Python; 'auto' never picks the simulator.
"""

from __future__ import annotations

from engine.errors import DeviceUnavailableError, EngineValueError

__all__ = ["DEVICES", "cuda_device_name", "resolve_device"]

#: The values of the `device` setting.
DEVICES = ("cpu", "cuda", "auto")


def cuda_device_name() -> str | None:
    """The name of the current CUDA device ('simulator' under the simulator), or None when no
    device is usable."""
    from numba import config, cuda

    try:
        if not cuda.is_available():
            return None
        if config.ENABLE_CUDASIM:
            return "simulator"
        name = cuda.get_current_device().name
    except cuda.CudaSupportError:
        return None
    return name.decode() if isinstance(name, bytes) else str(name)


def resolve_device(device: str) -> tuple[str, str]:
    """('cpu' or 'cuda', one line saying which and why) for the `device` setting.

    Raises EngineValueError for an unknown value and DeviceUnavailableError for 'cuda' without
    a usable device."""
    if device not in DEVICES:
        raise EngineValueError(f"device must be one of {', '.join(map(repr, DEVICES))}, got "
                               f"{device!r}")
    if device == "cpu":
        return "cpu", "device: cpu"
    name = cuda_device_name()
    if device == "cuda":
        if name is None:
            raise DeviceUnavailableError(
                "device 'cuda' was asked for but numba finds no usable CUDA device (no NVIDIA "
                "GPU or driver); use device 'cpu' or 'auto'")
        return "cuda", f"device: cuda ({name})"
    if name is None or name == "simulator":
        return "cpu", "device: cpu (no usable CUDA device)"
    return "cuda", f"device: cuda ({name})"
