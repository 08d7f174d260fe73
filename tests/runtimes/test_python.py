from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelhost.errors import ManifestError, RuntimeFailure
from tests.conftest import write_python_model
from tests.runtimes.conftest import load_runtime


def test_user_class_shipped_with_the_model(tmp_path: Path) -> None:
    runtime = load_runtime(write_python_model(tmp_path, "echo"))
    assert runtime.predict([{"text": "a"}], {}).results == [{"echo": {"text": "a"}}]
    runtime.unload()
    with pytest.raises(RuntimeFailure, match="not loaded"):
        runtime.predict([{"text": "a"}], {})


def test_bad_entrypoint_is_a_manifest_error(tmp_path: Path) -> None:
    directory = write_python_model(tmp_path, "echo")
    manifest = yaml.safe_load((directory / "modelhost.yaml").read_text())
    manifest["entrypoint"] = "echo_model"
    (directory / "modelhost.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(ManifestError, match=r"package\.module:ClassName"):
        load_runtime(directory)


def test_wrong_number_of_results_is_a_runtime_failure(tmp_path: Path) -> None:
    directory = write_python_model(tmp_path, "short")
    (directory / "echo_model.py").write_text(
        "class Echo:\n    def __init__(self, path):\n        pass\n"
        "    def predict(self, inputs, parameters):\n        return []\n"
    )
    runtime = load_runtime(directory)
    with pytest.raises(RuntimeFailure, match="returned 0 results for 1 inputs"):
        runtime.predict([{"text": "a"}], {})


def test_loads_succeed_while_other_threads_import(tmp_path: Path) -> None:
    """A python model loading while another thread imports (sys.modules changing under the
    scan) used to fail with "dictionary changed size during iteration" (seen in a loaded run).
    The churn thread adds and removes entries as fast as it can while versions load."""
    import sys
    import threading
    import types

    directories = [write_python_model(tmp_path / str(i), "echo", f"1.0.{i}") for i in range(20)]
    stop = threading.Event()

    def churn() -> None:
        index = 0
        while not stop.is_set():
            name = f"_mh_churn_{index % 50}"
            sys.modules[name] = types.ModuleType(name)
            sys.modules.pop(f"_mh_churn_{(index + 25) % 50}", None)
            index += 1

    thread = threading.Thread(target=churn, daemon=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so the scan is interrupted
    thread.start()
    try:
        runtimes = [load_runtime(directory) for directory in directories]
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
        for key in [k for k in list(sys.modules) if k.startswith("_mh_churn_")]:
            sys.modules.pop(key, None)
    assert [r.predict([{"text": "a"}], {}).results for r in runtimes] == [
        [{"echo": {"text": "a"}}]
    ] * 20
