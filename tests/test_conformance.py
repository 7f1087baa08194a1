"""jupyter_kernel_test, the conformance suite kernel authors run, on ``CondaTainer: python/3.11``.

The kernel is started as any Jupyter client starts it (``start_new_kernel`` with our kernelspec,
so through our provisioner, in an Apptainer instance). Every test of the suite runs but the
optional IOPub welcome message (JEP 65, off in the suite by default): each feature it would skip
when not configured (completion, inspection, history, is_complete, pager, display data,
clear_output, errors, stdout/stderr) is configured with IPython's answers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import jupyter_kernel_test
import pytest
from conftest import IMAGES, KERNEL, REQUIRED_IMAGES, USER_CACHE, sync_specs

pytestmark = pytest.mark.integration


class CondaTainerPythonKernelTests(jupyter_kernel_test.KernelTests):
    kernel_name = KERNEL

    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"

    completion_samples = [
        {"text": "zi", "matches": {"zip"}},
        {"text": "import os; os.pa", "matches": {"pardir", "path", "pathconf", "pathconf_names", "pathsep"}},
    ]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]

    code_page_something = "zip?"
    code_generate_error = "raise ValueError('from the container')"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
    ]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))", "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))", "mime": "text/latex"},
    ]
    code_history_pattern = "1?2*"
    # "range" is tested below: the suite expects the session number of a tail reply back, where
    # IPython answers 0 for the current session (a plain local ipykernel 7 fails the suite's check too).
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    saved: dict[str, str | None]
    root: Path

    @classmethod
    def setUpClass(cls) -> None:
        """A private Jupyter and CondaTainer layout with our kernelspec, then the suite's kernel start."""
        missing = [name for name in REQUIRED_IMAGES[:2] if not (IMAGES / name).is_file()]
        if missing or not shutil.which("apptainer"):
            pytest.fail(f"Apptainer or the test images ({', '.join(missing)}) are missing: run scripts/setup.sh")
        cls.root = Path(tempfile.mkdtemp(prefix="jct-conformance-"))
        images = cls.root / "images"
        images.mkdir()
        for name in REQUIRED_IMAGES[:2]:
            (images / name).symlink_to(IMAGES / name)
        layout = {
            "CNT_EXTRA_IMAGE_DIRS": images,
            "XDG_STATE_HOME": cls.root / "state",
            "XDG_CACHE_HOME": USER_CACHE,
            "JUPYTER_RUNTIME_DIR": cls.root / "runtime",
            "JUPYTER_DATA_DIR": cls.root / "data",
            "JUPYTER_CONFIG_DIR": cls.root / "config",
            "JUPYTER_PATH": cls.root / "data",
        }
        cls.saved = {key: os.environ.get(key) for key in layout}
        for key, value in layout.items():
            Path(value).mkdir(parents=True, exist_ok=True)
            os.environ[key] = str(value)
        sync_specs()
        super().setUpClass()

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            super().tearDownClass()
        finally:
            for key, value in cls.saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            shutil.rmtree(cls.root, ignore_errors=True)

    def test_history_range(self) -> None:
        codes = ["x = 40", "x + 2"]
        reply = self.history_helper(codes, output=True, raw=True, hist_access_type="tail", n=2)
        start = reply["content"]["history"][0][1]
        reply = self.history_helper([], output=True, raw=True, hist_access_type="range", session=0, start=start)
        assert [(entry[1] - start, entry[2]) for entry in reply["content"]["history"]] == [
            (0, ["x = 40", None]),
            (1, ["x + 2", "42"]),
        ], reply["content"]

    def test_the_kernel_runs_in_the_container(self) -> None:
        reply, output = self.execute_helper("import os, sys; print(os.environ['IN_CONDATAINER'], sys.prefix)")
        assert reply["content"]["status"] == "ok"
        assert output[-1]["content"]["text"] == "1 /cnt/python/3.11\n", output
