#!/usr/bin/env python3
"""Build the self-contained `edgespec` executable with PyInstaller (packaging/edgespec.spec).

    python scripts/build_exe.py [--onedir] [--dist DIR] [--work DIR] [--archive]

Run it with the Python environment edgespec is installed in (its llama_cpp and native extension are bundled).
Output: DIST/edgespec[.exe] (or the folder DIST/edgespec/ with --onedir) and DIST/licenses/; --archive also packs
both into DIST/edgespec-VERSION-OS-ARCH.tar.gz (.zip on Windows). Prints the path, size and build time.

Platform steps (the release workflow runs this same script):
  Windows  the OpenMP runtime the llama.cpp libraries import (vcomp140.dll, or libomp140.x86_64.dll from a clang
           build) is bundled next to them; a version resource is generated from edgespec.__version__.
  macOS    PyInstaller signs ad hoc. With EDGESPEC_CODESIGN_IDENTITY (a "Developer ID Application: ..." identity
           in the keychain) it signs with the hardened runtime and packaging/entitlements.plist; with
           APPLE_ID, APPLE_TEAM_ID and APPLE_APP_PASSWORD (an app-specific password) as well, it notarizes.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "packaging" / "edgespec.spec"
OPENMP_DLLS = ("vcomp140.dll", "libomp140.x86_64.dll")


def version() -> str:
    text = (ROOT / "edgespec" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'__version__\s*=\s*"([^"]+)"', text).group(1)


def version_info(path: Path) -> Path:
    """A Windows version resource (PyInstaller's VSVersionInfo text) for edgespec's version."""
    v = version()
    nums = tuple((int(n) for n in re.findall(r"\d+", v.split("+")[0])[:4])) + (0, 0, 0, 0)
    quad = nums[:4]
    strings = {
        "CompanyName": "edgespec", "FileDescription": "edgespec: speculative decoding for local GGUF models",
        "FileVersion": v, "InternalName": "edgespec", "LegalCopyright": "MIT License",
        "OriginalFilename": "edgespec.exe", "ProductName": "edgespec", "ProductVersion": v,
    }
    table = ",\n          ".join(f"StringStruct({k!r}, {s!r})" for k, s in strings.items())
    path.write_text(
        f"""VSVersionInfo(
  ffi=FixedFileInfo(filevers={quad}, prodvers={quad}, mask=0x3f, flags=0x0, OS=0x40004, fileType=0x1,
                    subtype=0x0, date=(0, 0)),
  kids=[
    StringFileInfo([StringTable('040904B0', [
          {table}])]),
    VarFileInfo([VarStruct('Translation', [1033, 1200])]),
  ],
)
""",
        encoding="utf-8",
    )
    return path


def llama_cpp_lib_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: llama_cpp is not installed in this Python environment")
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def openmp_runtime() -> list[Path]:
    """Windows: the OpenMP DLLs that llama_cpp's libraries import, found on this machine (Visual Studio's
    redistributable folder first, then System32). ggml fails to load without them on machines that lack them."""
    import pefile  # a PyInstaller dependency on Windows

    lib = llama_cpp_lib_dir()
    needed = set()
    for dll in lib.glob("*.dll"):
        pe = pefile.PE(str(dll), fast_load=True)
        pe.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_IMPORT"]])
        needed |= {imp.dll.decode().lower() for imp in getattr(pe, "DIRECTORY_ENTRY_IMPORT", [])} & set(OPENMP_DLLS)
        pe.close()
    found = []
    for name in sorted(needed):
        redist = [os.environ.get("VCToolsRedistDir", ""), *map(str, Path(os.environ.get("ProgramFiles", r"C:\Program Files")).glob("Microsoft Visual Studio/*/*/VC/Redist/MSVC/*/"))]
        candidates = [lib / name]
        candidates += [p for r in redist if r for p in sorted(Path(r).glob(f"x64/Microsoft.VC*.OpenMP*/{name}"), reverse=True)]
        candidates.append(Path(os.environ.get("SystemRoot", r"C:\Windows")) / "System32" / name)
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            sys.exit(f"error: llama.cpp's libraries need {name}, which was not found (install the Visual C++ redistributable or Visual Studio's C++ tools)")
        found.append(path)
    return found


def notarize(target: Path, exe: Path, work: Path) -> None:
    """Submit the signed executable (or folder) to Apple's notary service and wait. (A bare executable cannot be
    stapled; Gatekeeper looks the ticket up online.)"""
    creds = [os.environ.get(k) for k in ("APPLE_ID", "APPLE_TEAM_ID", "APPLE_APP_PASSWORD")]
    if not all(creds) or not os.environ.get("EDGESPEC_CODESIGN_IDENTITY"):
        print("macOS: not notarized (set EDGESPEC_CODESIGN_IDENTITY, APPLE_ID, APPLE_TEAM_ID, APPLE_APP_PASSWORD)")
        return
    apple_id, team, password = creds
    zipped = work / "notarize.zip"
    subprocess.run(["ditto", "-c", "-k", "--keepParent", str(target), str(zipped)], check=True)
    subprocess.run(["xcrun", "notarytool", "submit", str(zipped), "--apple-id", apple_id, "--team-id", team,
                    "--password", password, "--wait"], check=True)
    subprocess.run(["codesign", "--verify", "--strict", "--verbose=2", str(exe)], check=True)


def archive(target: Path, licenses: Path, dist: Path) -> Path:
    """DIST/edgespec-VERSION-OS-ARCH.(tar.gz|zip) with the executable (or folder) and the licences."""
    system = {"win32": "windows", "darwin": "macos"}.get(sys.platform, sys.platform)
    machine = platform.machine().lower().replace("amd64", "x86_64").replace("aarch64", "arm64")
    stem = f"edgespec-{version()}-{system}-{machine}"
    if sys.platform == "win32":
        out = dist / f"{stem}.zip"
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for base in (target, licenses):
                for f in [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()):
                    z.write(f, Path(stem) / f.relative_to(base.parent))
    else:
        out = dist / f"{stem}.tar.gz"
        with tarfile.open(out, "w:gz") as t:
            for base in (target, licenses):
                t.add(base, arcname=f"{stem}/{base.name}")
    return out


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onedir", action="store_true", help="build a folder (faster start-up) instead of one file")
    ap.add_argument("--dist", type=Path, default=ROOT / "dist", help="output directory (default: dist/)")
    ap.add_argument("--work", type=Path, default=None, help="PyInstaller's work directory (default: a temporary one)")
    ap.add_argument("--archive", action="store_true", help="also pack the executable and licences for a release")
    args = ap.parse_args()
    dist = args.dist.resolve()
    dist.mkdir(parents=True, exist_ok=True)
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="edgespec-pyinstaller-"))
    work.mkdir(parents=True, exist_ok=True)

    spec_args = ["--onedir"] if args.onedir else []
    if sys.platform == "win32":
        spec_args += ["--version-file", str(version_info(work / "version_info.txt"))]
        for dll in openmp_runtime():
            print(f"Windows: bundling the OpenMP runtime {dll}")
            spec_args += ["--binary", f"{dll}=llama_cpp/lib"]  # next to ggml-cpu.dll; llama_cpp puts it on PATH
    if sys.platform == "darwin" and os.environ.get("EDGESPEC_CODESIGN_IDENTITY"):
        spec_args += ["--codesign-identity", os.environ["EDGESPEC_CODESIGN_IDENTITY"]]

    exe_name = "edgespec.exe" if sys.platform == "win32" else "edgespec"
    target = dist / "edgespec" if args.onedir else dist / exe_name
    for stale in (dist / "edgespec", dist / exe_name):  # the other variant's output would shadow this one
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
           "--distpath", str(dist), "--workpath", str(work), str(SPEC), "--", *spec_args]
    try:
        proc = subprocess.run(cmd, cwd=work)  # not the checkout: an installed edgespec must not be shadowed by it
        if proc.returncode != 0:
            print(f"error: PyInstaller failed (exit {proc.returncode})", file=sys.stderr)
            return proc.returncode
        elapsed = time.monotonic() - t0
        exe = target / exe_name if args.onedir else target
        if sys.platform == "darwin":
            notarize(target, exe, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    licenses = dist / "licenses"  # written by the spec
    print(f"built {exe} ({size_of(target) / 1e6:.1f} MB) in {elapsed:.1f} s; licences in {licenses}")
    if args.archive:
        out = archive(target, licenses, dist)
        print(f"packed {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
