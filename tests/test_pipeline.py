"""The pipeline's fixed point: passes with nothing to do are not re-run; `needs_ops` gates passes."""

from __future__ import annotations

import onnx_ir as ir

from graphopt.core.pipeline import CountedPassResult, PassSpec, Pipeline
from tests.util import parse

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) {
    a = Identity(x)
    b = Identity(a)
    y = Relu(b)
}
"""


class RemoveOneIdentity(ir.passes.InPlacePass):
    """Removes one Identity per run, so the pipeline needs several rounds."""

    def call(self, model):
        for node in model.graph:
            if node.op_type == "Identity":
                node.outputs[0].replace_all_uses_with(node.inputs[0])
                model.graph.remove(node, safe=True)
                return CountedPassResult(model, True, {"removed": 1})
        return CountedPassResult(model, False, {})


class CountCalls(ir.passes.InPlacePass):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def call(self, model):
        self.calls += 1
        return CountedPassResult(model, False, {})


def _spec(name, instance, **kw) -> PassSpec:
    return PassSpec(name, lambda options: instance, name, **kw)


def test_idle_pass_reruns_only_after_a_change():
    model = parse(MODEL)
    before, after = CountCalls(), CountCalls()
    specs = [_spec("before", before), _spec("remove", RemoveOneIdentity()), _spec("after", after)]
    result = Pipeline(specs).run(model)
    assert [n.op_type for n in model.graph] == ["Relu"]
    # Rounds: 1 removes one Identity, 2 removes the other, 3 finds nothing. "before" runs
    # in every round (something changed after it); "after" runs in rounds 1 and 2 only: in
    # round 3 nothing has changed since its last run.
    assert result.iterations == 3
    assert before.calls == 3 and after.calls == 2
    stats = {s.name: s for s in result.stats}
    assert stats["remove"].runs == 3 and stats["remove"].counters["removed"] == 2


def test_needs_ops_skips_a_pass_without_building_it():
    model = parse(MODEL)
    built = []

    def factory(options):
        built.append(1)
        return CountCalls()

    specs = [PassSpec("gated", factory, "needs Conv", needs_ops=frozenset({"Conv"})),
             _spec("remove", RemoveOneIdentity())]
    result = Pipeline(specs).run(model)
    assert built == [] and {s.name: s.runs for s in result.stats}["gated"] == 0


def test_needs_ops_runs_when_an_op_appears():
    model = parse(MODEL)
    gated = CountCalls()
    specs = [_spec("gated", gated, needs_ops=frozenset({"Relu"}))]
    Pipeline(specs).run(model)
    assert gated.calls == 1


def test_recompose_triggers_cover_the_registry_gate():
    from graphopt.passes import REGISTRY
    from graphopt.passes.fusion.recompose_ops import TRIGGERS

    assert REGISTRY["recompose_ops"].needs_ops == frozenset().union(*TRIGGERS.values())


class Explodes(ir.passes.InPlacePass):
    def call(self, model):
        raise RuntimeError("boom")


def test_a_failing_pass_names_the_passes_that_ran_before_it():
    import pytest

    specs = [PassSpec("remove_one", lambda o: RemoveOneIdentity(), ""), PassSpec("count", lambda o: CountCalls(), ""),
             PassSpec("explodes", lambda o: Explodes(), "")]
    with pytest.raises(ir.passes.PassError, match=r"pass 'explodes' failed after remove_one, count: boom"):
        Pipeline(specs).run(parse(MODEL))
    with pytest.raises(ir.passes.PassError, match=r"pass 'explodes' failed \(the first pass run\): boom"):
        Pipeline(specs[2:]).run(parse(MODEL))
