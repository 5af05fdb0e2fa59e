"""The command line defers sympy (0.45 s of imports) and still does symbolic arithmetic when asked."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import DIGITS


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_optimize_command_never_imports_sympy(tmp_path):
    run = _python(f"""
        import sys
        from graphopt.cli import main
        sys.argv = ["graphopt", "optimize", {str(DIGITS)!r}, "-o", {str(tmp_path / "out.onnx")!r}, "--json"]
        try:
            main()
        except SystemExit as e:
            assert not e.code, e.code
        print("sympy imported:", "sympy.core" in sys.modules, file=sys.stderr)
    """)
    assert run.returncode == 0, run.stderr
    assert "sympy imported: False" in run.stderr
    assert (tmp_path / "out.onnx").exists()


def test_symbolic_dims_still_work_after_deferring():
    run = _python("""
        import sys
        from graphopt.startup import defer_sympy
        defer_sympy()
        import onnx_ir as ir
        assert "sympy.core" not in sys.modules
        assert str(ir.SymbolicDim("N") * 2 + 1) == "2*N + 1"
        import sympy
        from sympy import Expr
        import sympy.core
        x = sympy.Symbol("x")
        assert isinstance(x, Expr) and str(ir.SymbolicDim(x * 3)) == "3*x"
        print("ok")
    """)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_library_import_leaves_sympy_alone():
    run = _python("""
        import sys, graphopt
        graphopt.optimize  # the API, as a library user reaches it
        print(type(sys.modules.get("sympy")).__name__)
    """)
    assert run.returncode == 0 and run.stdout.strip() == "module", run.stderr
