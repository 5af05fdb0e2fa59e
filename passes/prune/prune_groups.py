"""Channel dependency groups for structured pruning (DepGraph-style), by forward dataflow.

A *space* is the set of output channels one layer creates: a Conv/ConvTranspose with
group 1, a Gemm, or a MatMul by a constant 2-D weight. Every value then carries a
*layout*: which axis holds channels, the spaces laid out along it (`segments`, in order;
space -1 marks channels that cannot be pruned) and how many positions each channel
occupies (`inner`: after Flatten of [N, C, H, W], a channel is H*W consecutive features).

Walking the main graph in topological order, nodes propagate layouts:

1. Layers consume channels (the weight's input-channel axis is sliced) and create a new
   space; depthwise Convs (group = channels, one input channel per group) pass channels
   through, slicing weights and bias and setting `group` to the new count.
2. Element-wise ops, BatchNormalization, InstanceNormalization, pooling, Pad/Resize that do
   not touch the channel axis, Transpose, Squeeze/Unsqueeze, reductions over other axes,
   Flatten and Reshapes that keep or flatten the channel axis pass layouts on; constant
   operands with a channel-sized axis (biases, BN parameters, scales) are sliced with them.
3. Two layouts meeting in an element-wise op (a residual Add, a squeeze-excitation Mul)
   must keep the same channels: their spaces are unified (union-find). Concat along the
   channel axis lays its inputs' segments end to end.
4. Anything else that reads channels blocks their spaces: graph outputs, unknown or
   custom ops, subgraphs, Softmax/LayerNormalization over channels, grouped Convs, Reshapes
   that split the channel axis (attention heads), a Shape whose result reaches the channel dim.

A *group* is a union-find class of spaces: pruning it keeps the same channel indices in
every member. It is prunable unless a member is blocked; the reason is kept for the report.
"""

from __future__ import annotations

__all__ = ["Layout", "Space", "ChannelGroup", "DependencyGraph", "analyze_channels", "Slice"]

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from graphopt.core.patterns import attr_int, attr_ints, constant_array, is_default_domain, static_shape

logger = logging.getLogger(__name__)

FIXED = -1  # a segment of channels that cannot be pruned


@dataclasses.dataclass(frozen=True)
class Layout:
    axis: int  # non-negative, in a value of rank `rank`
    rank: int
    segments: tuple[tuple[int, int], ...]  # (space id or FIXED, channels)
    inner: int = 1

    @property
    def channels(self) -> int:
        return sum(n for _, n in self.segments)

    @property
    def size(self) -> int:
        return self.channels * self.inner

    def moved(self, axis: int, rank: int, inner: int | None = None) -> "Layout":
        return Layout(axis, rank, self.segments, self.inner if inner is None else inner)


@dataclasses.dataclass
class Space:
    id: int
    size: int
    producer: ir.Node
    weight_axis: int  # the producer's weight axis that holds these output channels


@dataclasses.dataclass
class Slice:
    """Constant input `index` of `node` is cut along `axis` to the positions `layout` keeps."""

    node: ir.Node
    index: int
    axis: int
    layout: Layout


@dataclasses.dataclass
class ChannelGroup:
    name: str  # the first producer's node name
    size: int
    spaces: list[int]
    producers: list[str]
    blocked: str | None = None

    def to_dict(self) -> dict:
        return {"channels": self.size, "layers": self.producers,
                **({"blocked": self.blocked} if self.blocked else {})}


@dataclasses.dataclass
class DependencyGraph:
    spaces: list[Space]
    parent: list[int]
    groups: dict[str, ChannelGroup]
    slices: list[Slice]
    reshapes: list[tuple[ir.Node, int, Layout]]  # Reshape node, shape entry to rewrite, its layout
    depthwise: list[tuple[ir.Node, Layout]]  # Conv whose `group` follows its input's channels
    layouts: list[tuple[ir.Value, Layout]]

    def root(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def group_of(self, space: int) -> ChannelGroup:
        return self._by_root[self.root(space)]

    def __post_init__(self):
        self._by_root = {self.root(g.spaces[0]): g for g in self.groups.values()}

    def positions(self, layout: Layout, keep: dict[int, np.ndarray]) -> np.ndarray:
        """Kept positions along the layout's axis; `keep` maps group roots to kept channel indices."""
        parts, offset = [], 0
        for space, n in layout.segments:
            kept = keep.get(self.root(space)) if space != FIXED else None
            parts.append(offset + (np.arange(n) if kept is None else kept))
            offset += n
        channels = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return (channels[:, None] * layout.inner + np.arange(layout.inner)).reshape(-1)

    def touches(self, layout: Layout, roots: set[int]) -> bool:
        return any(s != FIXED and self.root(s) in roots for s, _ in layout.segments)


_UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Gelu", "Mish", "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round",
    "Sign", "Identity", "Cast", "ThresholdedRelu", "Clip", "Dropout", "Sin", "Cos", "Swish", "CastLike",
})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu", "Where"})
_POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"})
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceProd",
                     "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"})


def _rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


def _dim(value: ir.Value, axis: int):
    return None if value.shape is None else value.shape[axis]


class _Analyzer:
    def __init__(self, model: ir.Model):
        self.graph = model.graph
        self.layouts: dict[int, tuple[ir.Value, Layout]] = {}
        self.accepted: set[tuple[int, int]] = set()
        self.spaces: list[Space] = []
        self.parent: list[int] = []
        self.blocks: list[tuple[int, str]] = []
        self.slices: list[Slice] = []
        self.reshapes: list[tuple[ir.Node, int, Layout]] = []
        self.depthwise: list[tuple[ir.Node, Layout]] = []

    # -- bookkeeping
    def get(self, value: ir.Value | None) -> Layout | None:
        entry = None if value is None else self.layouts.get(id(value))
        return None if entry is None else entry[1]

    def put(self, value: ir.Value, layout: Layout) -> None:
        self.layouts[id(value)] = (value, layout)

    def accept(self, node: ir.Node, *indices: int) -> None:
        for i in indices:
            if node.inputs[i] is not None:
                self.accepted.add((id(node.inputs[i]), id(node)))

    def new_space(self, node: ir.Node, size: int, weight_axis: int) -> int:
        sid = len(self.spaces)
        self.spaces.append(Space(sid, size, node, weight_axis))
        self.parent.append(sid)
        return sid

    def root(self, s: int) -> int:
        while self.parent[s] != s:
            s = self.parent[s]
        return s

    def block(self, layout: Layout, reason: str) -> None:
        self.blocks += [(s, reason) for s, _ in layout.segments if s != FIXED]

    def unify(self, a: Layout, b: Layout) -> bool:
        if a.inner != b.inner or [n for _, n in a.segments] != [n for _, n in b.segments]:
            return False
        for (sa, _), (sb, _) in zip(a.segments, b.segments):
            if sa == FIXED or sb == FIXED:
                if sa != sb:
                    self.block(Layout(0, 1, ((max(sa, sb), 1),)), "added to channels that cannot be pruned")
            else:
                self.parent[self.root(sa)] = self.root(sb)
        return True

    # -- the walk
    def run(self) -> DependencyGraph:
        for node in self.graph:
            if not is_default_domain(node) or any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                                                  for a in node.attributes.values()):
                continue
            ins = [self.get(v) for v in node.inputs]
            handler = _HANDLERS.get(node.op_type)
            if handler is not None and (handler is _layer or any(ins)):
                handler(self, node, ins)
        for value, layout in self.layouts.values():
            if value.is_graph_output():
                self.block(layout, f"graph output {value.name}")
            for use in value.uses():
                if (id(value), id(use.node)) not in self.accepted:
                    self.block(layout, f"read by {use.node.op_type} {use.node.name}".rstrip())
        return self._result()

    def _result(self) -> DependencyGraph:
        members: dict[int, list[int]] = {}
        for space in self.spaces:
            members.setdefault(self.root(space.id), []).append(space.id)
        blocked = {}
        for space, reason in self.blocks:
            blocked.setdefault(self.root(space), reason)
        groups = {}
        for root, ids in members.items():
            names = [self.spaces[i].producer.name for i in ids]
            groups[names[0]] = ChannelGroup(names[0], self.spaces[ids[0]].size, ids, names, blocked.get(root))
        return DependencyGraph(self.spaces, self.parent, groups, self.slices, self.reshapes, self.depthwise,
                               list(self.layouts.values()))


# ---------------------------------------------------------------- handlers

def _layer(an: _Analyzer, node: ir.Node, ins) -> None:
    op = node.op_type
    weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.ndim < 2 or len(node.outputs) != 1:
        return
    x, out, rank = ins[0], node.outputs[0], _rank(node.outputs[0])
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if op in ("Conv", "ConvTranspose"):
        group = attr_int(node, "group", 1)
        if group != 1:
            if op == "Conv" and weight.shape[1] == 1 and x is not None and x.axis == 1 and group == x.size \
                    and (bias is None or constant_array(bias) is not None):
                # depthwise: channels pass through, each input position feeding `multiplier` outputs
                layout = x.moved(1, rank or x.rank, inner=x.inner * (weight.shape[0] // group))
                an.accept(node, 0)
                an.slices += [Slice(node, 1, 0, layout.moved(0, weight.ndim))]
                if bias is not None:
                    an.slices.append(Slice(node, 2, 0, layout.moved(0, 1)))
                an.depthwise.append((node, x))
                an.put(out, layout)
            return
        in_axis, out_axis = (1, 0) if op == "Conv" else (0, 1)
        if x is not None and x.axis == 1:
            an.accept(node, 0)
            an.slices.append(Slice(node, 1, in_axis, x.moved(in_axis, weight.ndim)))
        if bias is not None and constant_array(bias) is None:
            return
        sid = an.new_space(node, weight.shape[out_axis], out_axis)
        layout = Layout(1, rank or weight.ndim, ((sid, weight.shape[out_axis]),))
        an.slices.append(Slice(node, 1, out_axis, layout.moved(out_axis, weight.ndim)))
        if bias is not None:
            an.slices.append(Slice(node, 2, 0, layout.moved(0, 1)))
        an.put(out, layout)
        return
    if weight.ndim != 2:
        return
    trans_b = op == "Gemm" and attr_int(node, "transB", 0) == 1
    if op == "Gemm" and attr_int(node, "transA", 0):
        return
    x_rank = _rank(node.inputs[0]) or (x.rank if x else None)
    if x_rank is None or x_rank < 2:
        return
    in_axis, out_axis = (1, 0) if trans_b else (0, 1)
    if x is not None and x.axis == x_rank - 1:
        an.accept(node, 0)
        an.slices.append(Slice(node, 1, in_axis, x.moved(in_axis, 2)))
    n = weight.shape[out_axis]
    bias_slice = None
    if op == "Gemm" and bias is not None:
        b = constant_array(bias)
        if b is None:
            return
        if b.ndim and b.shape[-1] == n and n != 1:
            bias_slice = b.ndim - 1
        elif b.ndim and b.shape[-1] != 1:
            return
    sid = an.new_space(node, n, out_axis)
    layout = Layout(x_rank - 1, x_rank, ((sid, n),))
    an.slices.append(Slice(node, 1, out_axis, layout.moved(out_axis, 2)))
    if bias_slice is not None:
        an.slices.append(Slice(node, 2, bias_slice, layout.moved(bias_slice, bias_slice + 1)))
    an.put(out, layout)


def _unary(an: _Analyzer, node: ir.Node, ins) -> None:
    x = ins[0]
    if x is None or any(ins[1:]):
        return
    for extra in node.inputs[1:]:  # Clip bounds, Dropout ratio/training: scalars only
        if extra is not None and (constant_array(extra) is None or constant_array(extra).size != 1):
            return
    if node.op_type == "Dropout" and len(node.inputs) > 2 and node.inputs[2] is not None \
            and bool(constant_array(node.inputs[2]).reshape(-1)[0]):
        return
    an.accept(node, 0)
    for out in node.outputs:  # Dropout's mask has the same layout
        an.put(out, x.moved(x.axis, _rank(out) or x.rank))


def _broadcast(an: _Analyzer, node: ir.Node, ins) -> None:
    out = node.outputs[0]
    rank = _rank(out) or max((_rank(v) or (ins[i].rank if ins[i] else 0)) for i, v in enumerate(node.inputs) if v)
    tracked = [(i, lay) for i, lay in enumerate(ins) if lay is not None]
    ref = tracked[0][1]
    axis = ref.axis + rank - ref.rank
    ok = all(lay.axis + rank - lay.rank == axis and an.unify(ref, lay) for _, lay in tracked[1:])
    cuts = []
    for i, value in enumerate(node.inputs):
        if not ok:
            break
        if value is None or ins[i] is not None:
            continue
        array = constant_array(value)
        shape = array.shape if array is not None else (static_shape(value) or (tuple(value.shape) if value.shape
                                                                                 is not None else None))
        if shape is None:
            ok = False
            break
        at = axis - (rank - len(shape))
        if at < 0 or shape[at] == 1:
            continue
        if array is not None and shape[at] == ref.size:
            cuts.append(Slice(node, i, at, ref.moved(at, len(shape))))
        else:
            ok = False
    if not ok:
        for _, lay in tracked:
            an.block(lay, f"{node.op_type} {node.name} mixes channels with a tensor of another layout")
        return
    an.slices += cuts
    an.accept(node, *[i for i, _ in tracked])
    an.put(out, ref.moved(axis, rank))


def _per_channel(an: _Analyzer, node: ir.Node, ins) -> None:
    """BatchNormalization / InstanceNormalization: parameters [C] along the channel axis 1."""
    x = ins[0]
    params = range(1, 5) if node.op_type == "BatchNormalization" else range(1, 3)
    if x is None or x.axis != 1 or len(node.outputs) != 1 or attr_int(node, "training_mode", 0):
        return
    if any(i >= len(node.inputs) or constant_array(node.inputs[i]) is None for i in params):
        return
    an.accept(node, 0)
    an.slices += [Slice(node, i, 0, x.moved(0, 1)) for i in params]
    an.put(node.outputs[0], x)


def _pool(an: _Analyzer, node: ir.Node, ins) -> None:
    x = ins[0]
    if x is None or x.axis != 1 or (len(node.outputs) > 1 and node.outputs[1] is not None
                                    and (node.outputs[1].uses() or node.outputs[1].is_graph_output())):
        return  # MaxPool indices encode channel positions
    an.accept(node, 0)
    an.put(node.outputs[0], x)


def _pad(an: _Analyzer, node: ir.Node, ins) -> None:
    x = ins[0]
    if x is None or any(ins[1:]) or (len(node.inputs) > 3 and node.inputs[3] is not None):
        return
    pads = attr_ints(node, "pads") if len(node.inputs) < 2 or node.inputs[1] is None else constant_array(node.inputs[1])
    if pads is None or len(pads) != 2 * x.rank or pads[x.axis] or pads[x.axis + x.rank]:
        return
    if len(node.inputs) > 2 and node.inputs[2] is not None and constant_array(node.inputs[2]) is None:
        return
    an.accept(node, 0)
    an.put(node.outputs[0], x)


def _resize(an: _Analyzer, node: ir.Node, ins) -> None:
    x = ins[0]
    if x is None or any(ins[1:]):
        return
    scales_index = 2 if node.op_type == "Resize" else 1
    sizes = node.inputs[3] if node.op_type == "Resize" and len(node.inputs) > 3 else None
    scales = constant_array(node.inputs[scales_index]) if len(node.inputs) > scales_index and \
        node.inputs[scales_index] is not None else None
    if (sizes is not None and constant_array(sizes) is not None and constant_array(sizes).size) or scales is None \
            or scales.size != x.rank or scales[x.axis] != 1 or node.attributes.get("axes") is not None:
        return
    an.accept(node, *range(len(node.inputs)))
    an.put(node.outputs[0], x)


# ---------------------------------------------------------------- shape handlers

def _axes(node: ir.Node, rank: int, index: int = 1) -> list[int] | None:
    """The `axes` of Squeeze/Unsqueeze/Reduce*/Slice (attribute, or constant input), normalized."""
    axes = attr_ints(node, "axes")
    if axes is None and len(node.inputs) > index and node.inputs[index] is not None:
        array = constant_array(node.inputs[index])
        if array is None:
            return None
        axes = [int(a) for a in array.reshape(-1)]
    return None if axes is None else [a + rank if a < 0 else a for a in axes]


def _same_dim(a, b) -> bool:
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return a is not None and b is not None and a.value is not None and a.value == b.value


def _concat(an: _Analyzer, node: ir.Node, ins) -> None:
    tracked = [lay for lay in ins if lay is not None]
    rank = tracked[0].rank
    axis = attr_int(node, "axis", 0)
    axis = axis + rank if axis < 0 else axis
    out = node.outputs[0]
    if all(lay.axis == axis for lay in tracked):
        segments, inner = [], tracked[0].inner
        for value, lay in zip(node.inputs, ins):
            if lay is not None:
                if lay.inner != inner:
                    break
                segments += lay.segments
                continue
            dim = _dim(value, axis) if value is not None and _rank(value) == rank else None
            if not isinstance(dim, int) or dim % inner:
                break
            segments.append((FIXED, dim // inner))
        else:
            an.accept(node, *[i for i, lay in enumerate(ins) if lay is not None])
            an.put(out, Layout(axis, rank, tuple(segments), inner))
            return
    elif all(lay is not None for lay in ins) and all(lay.axis == tracked[0].axis and an.unify(tracked[0], lay)
                                                      for lay in tracked[1:]):
        an.accept(node, *range(len(ins)))
        an.put(out, tracked[0])
        return
    for lay in tracked:
        an.block(lay, f"Concat {node.name} joins channels it cannot line up")


def _flatten(an: _Analyzer, node: ir.Node, ins) -> None:
    x, value = ins[0], node.inputs[0]
    f = attr_int(node, "axis", 1)
    f = f + x.rank if f < 0 else f
    dims = list(value.shape) if value.shape is not None else None
    if dims is None or x.axis < f or any(d != 1 for d in dims[f:x.axis]) \
            or not all(isinstance(d, int) for d in dims[x.axis + 1:]):
        return
    an.accept(node, 0)
    an.put(node.outputs[0], x.moved(1, 2, inner=x.inner * int(np.prod(dims[x.axis + 1:], dtype=np.int64))))


def _channel_axis_after_reshape(src: list, a: int, dst: list) -> tuple[int, bool] | None:
    """Where the channel axis `a` of `src` lands in `dst`: (axis, flattened with what follows), or None
    when the reshape splits or scatters it. Leading dims equal in both (symbolic batch) pair up; the
    rest must be static and match by products."""
    lead = 0
    while lead < min(a, len(dst)) and _same_dim(src[lead], dst[lead]):
        lead += 1
    rest_src, rest_dst = src[lead:], dst[lead:]
    if not all(isinstance(d, int) for d in [*rest_src, *rest_dst]):
        return None
    before = int(np.prod(src[lead:a], dtype=np.int64))
    for b in range(lead, len(dst)):
        if int(np.prod(dst[lead:b], dtype=np.int64)) != before:
            continue
        if dst[b] == src[a]:
            return b, False
        if b == len(dst) - 1 and dst[b] == int(np.prod(src[a:], dtype=np.int64)):
            return b, True
    return None


def _reshape(an: _Analyzer, node: ir.Node, ins) -> None:
    x, value, out = ins[0], node.inputs[0], node.outputs[0]
    target = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if ins[1] is not None or target is None or value.shape is None or out.shape is None:
        return
    src, dst = list(value.shape), list(out.shape)
    where = _channel_axis_after_reshape(src, x.axis, dst)
    if where is None or target.size != len(dst):
        return  # splits the channel axis (attention heads) or scatters it
    b, flattened = where
    inner = x.inner * (int(np.prod(src[x.axis + 1:], dtype=np.int64)) if flattened else 1)
    layout = x.moved(b, len(dst), inner=inner)
    entry = int(target.reshape(-1)[b])
    if entry == 0 and (b != x.axis or flattened):
        return
    an.accept(node, 0)
    if entry > 0:
        an.reshapes.append((node, b, layout))
    an.put(out, layout)


def _transpose(an: _Analyzer, node: ir.Node, ins) -> None:
    x = ins[0]
    perm = attr_ints(node, "perm") or list(range(x.rank))[::-1]
    if len(perm) != x.rank:
        return
    an.accept(node, 0)
    an.put(node.outputs[0], x.moved(perm.index(x.axis), x.rank))


def _squeeze(an: _Analyzer, node: ir.Node, ins) -> None:
    x = ins[0]
    axes = _axes(node, x.rank)
    if axes is None:
        dims = node.inputs[0].shape
        axes = None if dims is None else [i for i, d in enumerate(dims) if d == 1]
    if axes is None or x.axis in axes or any(ins[1:]):
        return
    an.accept(node, 0)
    an.put(node.outputs[0], x.moved(x.axis - sum(a < x.axis for a in axes), x.rank - len(set(axes))))


def _unsqueeze(an: _Analyzer, node: ir.Node, ins) -> None:
    x = ins[0]
    count = len(attr_ints(node, "axes") or []) or (node.inputs[1] is not None and len(node.inputs) > 1
                                                   and constant_array(node.inputs[1]) is not None
                                                   and constant_array(node.inputs[1]).size) or 0
    axes = _axes(node, x.rank + count)
    if not axes or any(ins[1:]):
        return
    kept = [i for i in range(x.rank + len(axes)) if i not in axes]
    an.accept(node, 0)
    an.put(node.outputs[0], x.moved(kept[x.axis], x.rank + len(axes)))


def _reduce(an: _Analyzer, node: ir.Node, ins) -> None:
    x = ins[0]
    axes = _axes(node, x.rank)
    if not axes or x.axis in axes or any(ins[1:]):
        return  # no axes: reduces every axis (or is a no-op by attribute): not followed
    an.accept(node, 0)
    if attr_int(node, "keepdims", 1):
        an.put(node.outputs[0], x)
    else:
        an.put(node.outputs[0], x.moved(x.axis - sum(a < x.axis for a in axes), x.rank - len(set(axes))))


def _shape(an: _Analyzer, node: ir.Node, ins) -> None:
    """Shape is harmless if the channel dim never leaves it (slice attrs, or Gathers of other dims)."""
    x = ins[0]
    start, end = attr_int(node, "start", 0), attr_int(node, "end", x.rank)
    start, end = (start + x.rank if start < 0 else start), (end + x.rank if end < 0 else min(end, x.rank))
    if not start <= x.axis < end:
        an.accept(node, 0)
        return
    for use in node.outputs[0].uses():
        user = use.node
        index = constant_array(user.inputs[1]) if user.op_type == "Gather" and len(user.inputs) > 1 else None
        if index is None or attr_int(user, "axis", 0) != 0 or x.axis - start in set(index.reshape(-1).tolist()):
            return
    if not node.outputs[0].is_graph_output():
        an.accept(node, 0)


def _split(an: _Analyzer, node: ir.Node, ins) -> None:
    x = ins[0]
    axis = attr_int(node, "axis", 0)
    if (axis + x.rank if axis < 0 else axis) == x.axis or any(ins[1:]):
        return
    an.accept(node, 0)
    for out in node.outputs:
        an.put(out, x)


def _slice(an: _Analyzer, node: ir.Node, ins) -> None:
    x = ins[0]
    starts = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    axes = _axes(node, x.rank, index=3) if len(node.inputs) > 3 and node.inputs[3] is not None else (
        None if starts is None else list(range(starts.size)))
    if axes is None or x.axis in axes or any(ins[1:]):
        return
    an.accept(node, 0)
    an.put(node.outputs[0], x)


SHAPE_HANDLERS = {"Concat": _concat, "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose,
                  "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Shape": _shape, "Split": _split, "Slice": _slice,
                  **{op: _reduce for op in _REDUCE}}

_HANDLERS = {op: _layer for op in ("Conv", "ConvTranspose", "Gemm", "MatMul")}
_HANDLERS.update({op: _unary for op in _UNARY})
_HANDLERS.update({op: _broadcast for op in _BINARY})
_HANDLERS.update({op: _pool for op in _POOLS})
_HANDLERS.update({"BatchNormalization": _per_channel, "InstanceNormalization": _per_channel, "Pad": _pad,
                  "Resize": _resize, "Upsample": _resize})
_HANDLERS.update(SHAPE_HANDLERS)


def analyze_channels(model: ir.Model) -> DependencyGraph:
    """The channel spaces, groups and rewrites of the main graph (see module doc)."""
    graph = _Analyzer(model).run()
    logger.debug("channel groups: %d (%d prunable)", len(graph.groups),
                 sum(1 for g in graph.groups.values() if not g.blocked))
    return graph
