"""Register Intel's CPU runtime when pip installed it next to clconv.

pip's PoCL 3.0 carries LLVM 14, which builds nothing on CPUs newer than it (AMD
family 26: see clconv.compiler_probe).  Intel's CPU runtime, ``pip install
intel-opencl-rt``, builds there (measured on a Zen 5: `clconv demo` ran every
algorithm), but its wheel puts ``libintelocl.so`` in ``<prefix>/lib`` and an
ICD file naming the path the wheel was built at
(``/opt/anaconda1anaconda2anaconda3/lib/libintelocl.so``), so the ICD loader
skips it.  The loader bundled with pyopencl reads one vendors folder
(``OCL_ICD_VENDORS``, else /etc/OpenCL/vendors) and has no variable that adds a
library to it.

So when that library is there, not registered system-wide, and the user has set
neither ``OCL_ICD_VENDORS`` nor ``OPENCL_VENDOR_PATH``, clconv writes a folder (in
the user's cache folder) holding copies of the system's ICD files plus one naming
the library, and points
``OCL_ICD_VENDORS`` at it before anything queries the platforms (the loader reads
the variable then, once per process; child processes inherit it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

logger = logging.getLogger("clconv")

SYSTEM_VENDORS = "/etc/OpenCL/vendors"
LIBRARY = "libintelocl.so"
ICD_NAME = "clconv-pip-intel-cpu.icd"


def register_pip_intel_cpu_runtime(prefix: str = sys.prefix,
                                   system_vendors: str = SYSTEM_VENDORS) -> Optional[Path]:
    """Point the ICD loader at a folder that adds ``<prefix>/lib/libintelocl.so``;
    returns the folder, or None where there is nothing to do.  Never raises."""
    if os.environ.get("OCL_ICD_VENDORS") or os.environ.get("OPENCL_VENDOR_PATH"):
        return None  # the user's choice of vendors
    library = Path(prefix, "lib", LIBRARY)
    if not library.is_file():
        return None
    try:
        system = {path.name: path.read_text() for path in sorted(Path(system_vendors).glob(
            "*.icd"))} if Path(system_vendors).is_dir() else {}
        if any(Path(text.strip()).name == LIBRARY and Path(text.strip()).is_file()
               for text in system.values()):
            return None  # registered system-wide already
        folder = _folder_for(prefix)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in {**system, ICD_NAME: f"{library}\n"}.items():
            _write_atomically(folder / name, text)
    except OSError as exc:
        logger.debug("not registering %s: %s", library, exc)
        return None
    os.environ["OCL_ICD_VENDORS"] = str(folder)
    logger.debug("OCL_ICD_VENDORS=%s: the system's ICD files and %s", folder, library)
    return folder


def _folder_for(prefix: str) -> Path:
    """One folder per Python prefix in the user's cache folder (not a shared temporary
    folder, where another user could plant an ICD file naming their own library)."""
    import platformdirs

    key = hashlib.sha256(prefix.encode()).hexdigest()[:16]
    return Path(platformdirs.user_cache_dir("clconv", appauthor=False), f"icd-{key}")


def _write_atomically(path: Path, text: str) -> None:
    """Processes starting together may write the same folder: a loader must never read
    a half-written file (an ICD file the system no longer has stays; the loader skips
    a library it cannot open)."""
    if path.is_file() and path.read_text() == text:
        return
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(temporary, path)
