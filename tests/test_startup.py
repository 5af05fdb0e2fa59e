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
        from graphopt.app.cli import main
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
        from graphopt.app.startup import defer_sympy
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


def test_onnxscript_is_loaded_only_when_a_rewrite_rule_can_match(tmp_path):
    """MobileNet's Relu6 (Clip of a Conv) and Pads before pooling are not onnxscript candidates."""
    run = _python("""
        import sys
        import numpy as np, onnx, onnx.helper as oh, onnx.numpy_helper as nh
        import graphopt
        w = nh.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
        lo, hi = nh.from_array(np.array(0, np.float32), "lo"), nh.from_array(np.array(6, np.float32), "hi")
        pads = nh.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
        graph = oh.make_graph([oh.make_node("Conv", ["x", "w"], ["c"]), oh.make_node("Clip", ["c", "lo", "hi"], ["r"]),
                               oh.make_node("Pad", ["r", "pads"], ["p"]),
                               oh.make_node("MaxPool", ["p"], ["y"], kernel_shape=[2, 2])], "g",
                              [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [w, lo, hi, pads])
        model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
        result = graphopt.optimize(model)
        assert result.report.verification.status == "passed"
        assert "Pad" not in [n.op_type for n in result.model.graph]  # folded into the pool, natively
        print("onnxscript loaded:", any(m.startswith("onnxscript") for m in sys.modules))
    """)
    assert run.returncode == 0, run.stderr
    assert "onnxscript loaded: False" in run.stdout
