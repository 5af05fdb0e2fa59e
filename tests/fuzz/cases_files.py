"""Fuzz families around files: external-data tricks and special output paths."""

from __future__ import annotations

import os
import pathlib
import stat
from collections.abc import Callable

import numpy as np
import onnx
import onnx.helper as oh

from tests.fuzz import models
from tests.fuzz.case import Case, optimize_argv as _optimize, write_model as _write
from tests.fuzz.harness import Paths

# --- external data ------------------------------------------------------------------------------------

def _constant_model() -> onnx.ModelProto:
    """y = x + Constant, the constant in raw_data (what onnx moves to external data with convert_attribute)."""
    value = onnx.numpy_helper.from_array(np.arange(1, 5, dtype=np.float32), "c_value")
    g = oh.make_graph([oh.make_node("Constant", [], ["c"], value=value, name="const"),
                       oh.make_node("Add", ["x", "c"], ["y"], name="add")], "g",
                      [oh.make_tensor_value_info("x", 1, [4])], [oh.make_tensor_value_info("y", 1, [4])])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def external_data_cases() -> list[Case]:
    cases = []

    def ext_case(name, tamper: Callable[[Paths, pathlib.Path], None], expect="error", fast=True, base=None,
                 flags=()):
        def build(paths, rng):
            model = (base or models.conv_bn_model)()
            src = paths.inp / "model.onnx"
            data = models.save_external(model, src)
            tamper(paths, data)
            return _optimize(paths, *flags)
        return Case("external_data", name, build, expect=expect, fast=fast)

    def loc(value_fn):
        def tamper(paths, data):
            models.set_external_field(paths.inp / "model.onnx", "location", value_fn(paths))
        return tamper

    def field(key, value_fn):
        def tamper(paths, data):
            models.set_external_field(paths.inp / "model.onnx", key, str(value_fn(paths, data)))
        return tamper

    def symlink_out(paths, data):
        (paths.inp / "link.data").symlink_to(paths.outside / "secret")
        models.set_external_field(paths.inp / "model.onnx", "location", "link.data")

    def symlink_in(paths, data):
        (paths.inp / "link.data").symlink_to(data.name)
        models.set_external_field(paths.inp / "model.onnx", "location", "link.data")

    def dir_symlink_out(paths, data):
        (paths.inp / "sub").symlink_to(paths.outside, target_is_directory=True)
        models.set_external_field(paths.inp / "model.onnx", "location", "sub/secret")

    def hardlink_out(paths, data):
        os.link(paths.outside / "secret.data", paths.inp / "hard.data")
        models.set_external_field(paths.inp / "model.onnx", "location", "hard.data")

    def hardlink_in(paths, data):
        os.link(data, paths.inp / "second.data")

    def fifo(paths, data):
        os.mkfifo(paths.inp / "pipe.data")
        models.set_external_field(paths.inp / "model.onnx", "location", "pipe.data")

    def directory(paths, data):
        (paths.inp / "dir.data").mkdir()
        models.set_external_field(paths.inp / "model.onnx", "location", "dir.data")

    def missing(paths, data):
        data.unlink()

    def subdir_ok(paths, data):
        (paths.inp / "weights").mkdir()
        data.rename(paths.inp / "weights" / data.name)
        models.set_external_field(paths.inp / "model.onnx", "location", f"weights/{data.name}")

    def constant_attr(paths, data):  # a Constant node's tensor attribute stored externally, pointing out
        proto = _constant_model()
        onnx.save_model(proto, str(paths.inp / "model.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0,
                        convert_attribute=True)
        p = onnx.load(str(paths.inp / "model.onnx"), load_external_data=False)
        for t in onnx.external_data_helper._get_all_tensors(p):
            if t.data_location == onnx.TensorProto.EXTERNAL:
                for e in t.external_data:
                    if e.key == "location":
                        e.value = "../../outside/secret"
        onnx.save(p, str(paths.inp / "model.onnx"))

    def valid_constant_attr(paths, data):
        proto = _constant_model()
        onnx.save_model(proto, str(paths.inp / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=0, convert_attribute=True)

    def subgraph_initializer(paths, data):  # an initializer inside an If branch, pointing out
        then = oh.make_graph([oh.make_node("Add", ["x", "w"], ["t"])], "then", [],
                             [oh.make_tensor_value_info("t", 1, [4])],
                             [onnx.numpy_helper.from_array(np.ones(4, np.float32), "w")])
        other = oh.make_graph([oh.make_node("Neg", ["x"], ["e"])], "else", [], [oh.make_tensor_value_info("e", 1, [4])])
        g = oh.make_graph([oh.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="if")], "g",
                          [oh.make_tensor_value_info("x", 1, [4]), oh.make_tensor_value_info("c", 9, [])],
                          [oh.make_tensor_value_info("y", 1, [4])])
        proto = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
        models.save_external(proto, paths.inp / "model.onnx")
        models.set_external_field(paths.inp / "model.onnx", "location", "../../outside/secret")

    def two_files_ok(paths, data):
        proto = models.conv_bn_model()
        onnx.save_model(proto, str(paths.inp / "model.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=False, size_threshold=0)

    cases += [
        ext_case("dotdot", loc(lambda p: "../../outside/secret")),
        ext_case("dotdot-staying-inside", loc(lambda p: "sub/../model.onnx.data")),
        ext_case("absolute-sentinel", loc(lambda p: str(p.outside / "secret"))),
        ext_case("absolute-etc-passwd", loc(lambda p: "/etc/passwd")),
        ext_case("absolute-dev-zero", loc(lambda p: "/dev/zero")),
        ext_case("backslash-dotdot", loc(lambda p: "..\\..\\outside\\secret")),
        ext_case("empty-location", loc(lambda p: "")),
        ext_case("nul-in-location", loc(lambda p: "model.onnx.data\0../../outside/secret")),
        ext_case("symlink-leaving-folder", symlink_out),
        ext_case("symlink-inside-folder", symlink_in),
        ext_case("dir-symlink-leaving-folder", dir_symlink_out),
        ext_case("hardlink-to-outside", hardlink_out),
        ext_case("hardlink-inside", hardlink_in),
        ext_case("fifo-data", fifo),
        ext_case("directory-data", directory),
        ext_case("missing-data", missing),
        ext_case("length-short", field("length", lambda p, d: 4)),
        ext_case("length-long", field("length", lambda p, d: 10_000)),
        ext_case("length-zero", field("length", lambda p, d: 0)),
        ext_case("offset-past-end", field("offset", lambda p, d: d.stat().st_size + 10)),
        ext_case("offset-near-end", field("offset", lambda p, d: d.stat().st_size - 8)),
        ext_case("offset-negative", field("offset", lambda p, d: -8)),
        ext_case("offset-not-a-number", field("offset", lambda p, d: "abc")),
        ext_case("offset-huge", field("offset", lambda p, d: 2**62)),
        ext_case("truncated-data", lambda p, d: d.write_bytes(d.read_bytes()[:100])),
        ext_case("constant-attribute-dotdot", constant_attr),
        ext_case("subgraph-initializer-dotdot", subgraph_initializer),
        ext_case("valid-pair", lambda p, d: None, expect="ok"),
        ext_case("valid-constant-attribute", valid_constant_attr, expect="ok"),
        ext_case("valid-subfolder", subdir_ok, expect="ok"),
        ext_case("valid-dot-slash", loc(lambda p: "./model.onnx.data"), expect="ok"),
        ext_case("valid-one-file-per-tensor", two_files_ok, expect="ok"),
        ext_case("valid-unknown-key", field("sha1", lambda p, d: "deadbeef"), expect="ok"),
        ext_case("valid-digits", lambda p, d: None, expect="ok", base=models.digits),
        ext_case("valid-digits-level3", lambda p, d: None, expect="ok", base=models.digits,
                 flags=("--level", "3", "--no-measure")),
    ]
    return cases


# --- special output paths ---------------------------------------------------------------------------

def output_path_cases() -> list[Case]:
    cases = []

    def out_case(name, prepare: Callable[[Paths], str], expect="error", output_name="model.opt.onnx",
                 external=False, flags=(), allowed_out=(), check=None, fast=True):
        def build(paths, rng):
            src = paths.inp / "model.onnx"
            if external:
                models.save_external(models.conv_bn_model(), src)
            else:
                _write(paths, models.conv_bn_model())
            target = prepare(paths)
            return ["optimize", str(src), "-o", target, *flags]
        return Case("output_path", name, build, expect=expect, output_name=output_name, allowed_out=allowed_out,
                    extra_check=check, fast=fast)

    def fifo(paths):
        os.mkfifo(paths.out / "model.opt.onnx")
        return str(paths.out / "model.opt.onnx")

    def still_fifo(verdict, paths):
        return None if stat.S_ISFIFO(os.stat(paths.out / "model.opt.onnx").st_mode) else "the FIFO was replaced"

    def device(minor: int):
        """A private copy of /dev/null (1, 3) or /dev/full (1, 7): never the system's own node, which a
        regression (or an old graphopt) would replace with a regular file for everyone on the machine."""
        def prepare(paths):
            target = paths.out / "model.opt.onnx"
            try:
                os.mknod(target, stat.S_IFCHR | 0o666, os.makedev(1, minor))
            except OSError:  # no CAP_MKNOD: a FIFO is the closest special file
                os.mkfifo(target)
            return str(target)
        return prepare

    def still_device(verdict, paths):
        mode = os.stat(paths.out / "model.opt.onnx").st_mode
        return None if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) else "the device node was replaced"

    def hardlink(paths):
        os.link(paths.inp / "model.onnx", paths.out / "model.opt.onnx")
        return str(paths.out / "model.opt.onnx")

    def symlink(paths):
        (paths.out / "model.opt.onnx").symlink_to(paths.inp / "model.onnx")
        return str(paths.out / "model.opt.onnx")

    def directory(paths):
        (paths.out / "model.opt.onnx").mkdir()
        return str(paths.out / "model.opt.onnx")

    def stale_pair(paths):
        models.save_external(models.conv_bn_model(seed=9), paths.out / "model.opt.onnx")
        return str(paths.out / "model.opt.onnx")

    def garbage(paths):
        (paths.out / "model.opt.onnx").write_bytes(b"garbage")
        return str(paths.out / "model.opt.onnx")

    def readonly(paths):
        (paths.out / "ro").mkdir()
        os.chmod(paths.out / "ro", 0o500)
        return str(paths.out / "ro" / "model.opt.onnx")

    cases += [
        out_case("fifo", fifo, allowed_out=("model.opt.onnx",), check=still_fifo, output_name=None),
        out_case("char-device-null", device(3), allowed_out=("model.opt.onnx",), check=still_device, output_name=None),
        out_case("char-device-full", device(7), allowed_out=("model.opt.onnx",), check=still_device, output_name=None),
        out_case("hardlink-of-input", hardlink, allowed_out=("model.opt.onnx",), output_name=None),
        out_case("symlink-to-input", symlink, allowed_out=("model.opt.onnx",), output_name=None),
        out_case("input-itself", lambda p: str(p.inp / "model.onnx"), output_name=None),
        out_case("input-spelled-with-dotdot", lambda p: str(p.out / ".." / "in" / "model.onnx"), output_name=None),
        out_case("input-data-file", lambda p: str(p.inp / "model.onnx.data"), external=True, output_name=None),
        out_case("input-data-as-pair-target", lambda p: str(p.inp / "model.onnx"), external=True, output_name=None),
        out_case("existing-directory", directory, allowed_out=("model.opt.onnx",), output_name=None),
        out_case("trailing-slash", lambda p: str(p.out) + "/", output_name=None),
        out_case("nested-new-folders", lambda p: str(p.out / "a" / "b" / "model.opt.onnx"), expect="ok",
                 output_name="a/b/model.opt.onnx", allowed_out=("a",)),
        out_case("unicode-and-spaces", lambda p: str(p.out / "mödel öut 1.onnx"), expect="ok",
                 output_name="mödel öut 1.onnx"),
        out_case("over-stale-pair", stale_pair, expect="ok", external=True),
        out_case("over-garbage-file", garbage, expect="ok"),
        out_case("over-stale-pair-with-single", stale_pair, expect="ok"),
        out_case("read-only-folder", readonly, allowed_out=("ro",), output_name=None,
                 expect="error" if os.geteuid() else "any"),  # root writes anyway
        out_case("report-beside", lambda p: str(p.out / "model.opt.onnx"), expect="ok",
                 flags=("--report", "REPORT"), allowed_out=("report.json",)),
        out_case("report-onto-input", lambda p: str(p.out / "model.opt.onnx"), flags=("--report", "INPUT_MODEL"),
                 output_name=None),
        out_case("report-onto-output", lambda p: str(p.out / "model.opt.onnx"), flags=("--report", "OUTPUT_MODEL"),
                 output_name=None),
    ]
    return cases


def _fix_report_flag(argv: list[str], paths: Paths) -> list[str]:
    names = {"REPORT": paths.out / "report.json", "INPUT_MODEL": paths.inp / "model.onnx",
             "OUTPUT_MODEL": paths.out / "model.opt.onnx"}
    return [str(names[a]) if a in names else a for a in argv]
