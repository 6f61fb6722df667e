"""hatch_build.py's decisions: when the wheel is compiled, when it falls back to pure Python, when it fails.

The compile itself is exercised by scripts/check, which builds the wheel with FHIRADAPTER_COMPILE=require
and runs every test against it (test_cli checks that the compiled modules are the ones imported).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from builders import ROOT

pytest.importorskip("hatchling", reason="hatchling (a dev dependency) runs the build hook")


@pytest.fixture(autouse=True)
def _no_compile_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FHIRADAPTER_COMPILE", raising=False)  # each test sets what it needs


def _hook(tmp_path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("hatch_build", ROOT / "hatch_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CustomBuildHook(str(ROOT), {}, None, None, str(tmp_path), "wheel")


def _build_data() -> dict[str, Any]:
    return {"pure_python": True, "infer_tag": False, "force_include": {}}


def test_editable_installs_and_compile_no_are_never_compiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = _hook(tmp_path)
    monkeypatch.setattr(hook, "_compile", lambda work: pytest.fail("compiled"))
    data = _build_data()
    hook.initialize("editable", data)
    assert data == _build_data()
    monkeypatch.setenv("FHIRADAPTER_COMPILE", "no")
    hook.initialize("standard", data)
    assert data == _build_data()


def test_a_compiled_build_ships_every_extension_and_is_platform_tagged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = _hook(tmp_path)

    def fake_compile(work: Path) -> list[Path]:
        built = [work / "lib" / "abc__mypyc.cpython-311-x86_64-linux-gnu.so"]
        built.append(work / "lib" / "fhiradapter" / "core" / "mappers.cpython-311-x86_64-linux-gnu.so")
        return built

    monkeypatch.setattr(hook, "_compile", fake_compile)
    data = _build_data()
    hook.initialize("standard", data)
    assert data["pure_python"] is False and data["infer_tag"] is True
    assert sorted(data["force_include"].values()) == [
        "abc__mypyc.cpython-311-x86_64-linux-gnu.so",
        "fhiradapter/core/mappers.cpython-311-x86_64-linux-gnu.so",
    ]
    hook.finalize("standard", data, str(tmp_path / "x.whl"))
    assert not hook._work.exists()  # the temporary build folder is removed


def _failing(work: Path) -> list[Path]:
    raise subprocess.CalledProcessError(1, "gcc", output="gcc: error: Python.h: No such file or directory\n")


def test_without_a_compiler_the_wheel_is_pure_python_with_a_warning_naming_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hook = _hook(tmp_path)
    monkeypatch.setattr(hook, "_compile", _failing)
    data = _build_data()
    hook.initialize("standard", data)
    assert data == _build_data()
    err = capsys.readouterr().err
    assert "installing pure Python" in err and "Python.h: No such file" in err


def test_compile_require_turns_the_fallback_into_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hook = _hook(tmp_path)
    monkeypatch.setattr(hook, "_compile", _failing)
    monkeypatch.setenv("FHIRADAPTER_COMPILE", "require")
    with pytest.raises(RuntimeError, match=re.escape("Python.h: No such file")):
        hook.initialize("standard", _build_data())
