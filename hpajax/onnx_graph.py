"""A JAX function as an ONNX model: its jaxpr, primitive by primitive, in ONNX operators.

Written for hpajax's inference functions (convolutions, BatchNorm in inference
mode, pooling, dense heads, resizing by matrices, unrolled test-time views,
sigmoid) because no jax2onnx release that installs beside our pinned stack
converts them: 0.13.0 refuses antialiased resizes and multi-way switches and
writes ResNet residual additions that mix NCHW and NHWC, and later releases need
orbax-checkpoint < 0.11.37. A primitive outside ``_CONVERTERS`` is an error
naming it. The input's leading dimensions may be symbolic (a free batch);
every other shape is static. bfloat16 values are computed in float32.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence

import jax
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min


def to_onnx(fn: Callable, weights, example: jax.ShapeDtypeStruct, *,
            input_name: str = "images", output_name: str = "probabilities") -> onnx.ModelProto:
    """The ONNX model of ``fn(weights, x)`` (one array out) for ``x`` of ``example``'s shape
    and dtype, whose symbolic dimensions (``jax.export.symbolic_shape``) stay free.

    ``weights`` (a pytree of arrays) become the model's initializers, each once
    however often ``fn`` uses it (a test-time view per use, for one).
    """
    closed = jax.make_jaxpr(fn)(weights, example)
    graph = _Graph()
    graph.inputs.append(helper.make_tensor_value_info(
        input_name, _onnx_type(example.dtype), [_dim(d) for d in example.shape]))
    *weight_vars, image_var = closed.jaxpr.invars
    env = {image_var: input_name}
    env.update({var: graph.const(np.asarray(value), "weight")
                for var, value in zip(weight_vars, jax.tree.leaves(weights))})
    graph.symbols.update({str(d): (input_name, i) for i, d in enumerate(example.shape)
                          if not isinstance(d, int)})
    env.update({var: graph.const(np.asarray(value))
                for var, value in zip(closed.jaxpr.constvars, closed.consts)})
    (outvar,) = closed.jaxpr.outvars
    graph.convert(closed.jaxpr.eqns, env, needed={outvar})
    graph.nodes.append(helper.make_node("Identity", [graph.read(env, outvar)], [output_name]))
    graph.outputs.append(helper.make_tensor_value_info(
        output_name, _onnx_type(outvar.aval.dtype), [_dim(d) for d in outvar.aval.shape]))
    used = {name for node in graph.nodes for name in node.input}
    initializers = [i for i in graph.initializers if i.name in used]
    model = helper.make_model(
        helper.make_graph(graph.nodes, "hpajax", graph.inputs, graph.outputs, initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="hpajax")
    onnx.checker.check_model(model)
    return model


def _dim(d) -> int | str:
    return d if isinstance(d, int) else str(d)


def _onnx_type(dtype) -> int:
    dtype = np.dtype(dtype)
    return TensorProto.FLOAT if dtype == jax.numpy.bfloat16 else helper.np_dtype_to_tensor_dtype(
        dtype)


class _Graph:
    """The nodes and initializers being written, with fresh names for their values."""

    def __init__(self):
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []
        self.symbols: dict[str, tuple[str, int]] = {}  # symbolic dim -> (input, axis)
        self.static: set[str] = set()  # values computed from initializers alone
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        if value.dtype == jax.numpy.bfloat16:
            value = value.astype(np.float32)
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        self.static.add(name)
        return name

    def node(self, op: str, inputs: Sequence[str], **attrs) -> str:
        out = self.name(op)
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        if all(i in self.static for i in inputs):
            self.static.add(out)
        return out

    def read(self, env: dict, atom) -> str:
        if isinstance(atom, jax.extend.core.Literal):
            return self.const(np.asarray(atom.val, atom.aval.dtype))
        return env[atom]

    def shape(self, dims: Sequence) -> str:
        """A 1-D int64 tensor of ``dims``; symbolic ones read from the input at run time."""
        if all(isinstance(d, int) for d in dims):
            return self.const(np.asarray(dims, np.int64), "shape")
        parts = []
        for d in dims:
            if isinstance(d, int):
                parts.append(self.const(np.asarray([d], np.int64), "dim"))
            elif str(d) in self.symbols:
                source, axis = self.symbols[str(d)]
                parts.append(self.node("Shape", [source], start=axis, end=axis + 1))
            else:
                raise NotImplementedError(f"ONNX export: the dimension {d} is neither static "
                                          "nor one of the input's")
        return self.node("Concat", parts, axis=0)

    def convert(self, eqns: Sequence, env: dict, needed: set) -> None:
        """Writes the equations that ``needed`` depends on, binding their outputs in ``env``."""
        live = set(needed)
        kept = []
        for eqn in reversed(eqns):
            if any(v in live for v in eqn.outvars):
                kept.append(eqn)
                live |= {v for v in eqn.invars if not isinstance(v, jax.extend.core.Literal)}
        for eqn in reversed(kept):
            name = eqn.primitive.name
            if name not in _CONVERTERS:
                raise NotImplementedError(f"ONNX export: no conversion of the JAX primitive "
                                          f"{name!r} (from {_caller(eqn)})")
            ins = [self.read(env, v) for v in eqn.invars]
            outs = _CONVERTERS[name](self, eqn, ins)
            env.update(zip(eqn.outvars, outs))


def _caller(eqn) -> str:
    """The innermost frame of the equation's source outside JAX, as "file:line"."""
    frames = [f for f in eqn.source_info.traceback.frames
              if "/jax/" not in f.file_name] if eqn.source_info.traceback else []
    return f"{frames[0].file_name}:{frames[0].line_num}" if frames else "unknown"


def _inline(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    """A call of a sub-jaxpr (jit, custom_jvp_call, ...): its equations in place."""
    inner = next(eqn.params[k] for k in ("jaxpr", "call_jaxpr", "fun_jaxpr")
                 if k in eqn.params)
    jaxpr = getattr(inner, "jaxpr", inner)
    consts = getattr(inner, "consts", [])
    env = dict(zip(jaxpr.invars, ins))
    env.update({v: graph.const(np.asarray(c)) for v, c in zip(jaxpr.constvars, consts)})
    graph.convert(jaxpr.eqns, env, needed=set(jaxpr.outvars))
    return [graph.read(env, v) for v in jaxpr.outvars]


def _simple(op: str) -> Callable:
    return lambda graph, eqn, ins: [graph.node(op, ins)]


def _sub(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    """``x - c`` as ``x + (-c)`` (the same float) where ``c`` is a constant: the form
    onnxruntime folds into a preceding convolution's bias (inference BatchNorm)."""
    x, c = ins
    if c in graph.static and x not in graph.static:
        return [graph.node("Add", [x, graph.node("Neg", [c])])]
    return [graph.node("Sub", ins)]


def _max(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    """``max(x, 0)`` as ``Relu(x)``, which onnxruntime fuses into a preceding convolution."""
    zero = [isinstance(v, jax.extend.core.Literal) and np.all(np.asarray(v.val) == 0)
            for v in eqn.invars]
    if any(zero) and not all(zero):
        return [graph.node("Relu", [ins[zero.index(False)]])]
    return [graph.node("Max", ins)]


def _rsqrt(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    return [graph.node("Reciprocal", [graph.node("Sqrt", ins)])]


def _log1p(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    one = graph.const(np.ones((), _compute_dtype(eqn.invars[0].aval.dtype)))
    return [graph.node("Log", [graph.node("Add", [ins[0], one])])]


def _erfc(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    """``1 - erf(x)`` (the exact GELU's form in ``jax.nn.gelu``)."""
    one = graph.const(np.ones((), _compute_dtype(eqn.invars[0].aval.dtype)))
    return [graph.node("Sub", [one, graph.node("Erf", ins)])]


def _integer_pow(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    exponent = graph.const(np.asarray(eqn.params["y"], _compute_dtype(eqn.invars[0].aval.dtype)))
    return [graph.node("Pow", [ins[0], exponent])]


def _compute_dtype(dtype) -> np.dtype:
    return np.dtype(np.float32) if np.dtype(dtype) == jax.numpy.bfloat16 else np.dtype(dtype)


def _select_n(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    if len(ins) != 3:
        raise NotImplementedError("ONNX export: select_n of more than two cases")
    which, if_false, if_true = ins
    if eqn.invars[0].aval.dtype != np.bool_:
        which = graph.node("Cast", [which], to=TensorProto.BOOL)
    return [graph.node("Where", [which, if_true, if_false])]


def _clamp(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    low, x, high = ins
    return [graph.node("Max", [graph.node("Min", [x, high]), low])]


def _convert(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    return [graph.node("Cast", ins, to=_onnx_type(eqn.params["new_dtype"]))]


def _reshape(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    return [graph.node("Reshape", [ins[0], graph.shape(eqn.params["new_sizes"])])]


def _squeeze(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    axes = graph.const(np.asarray(eqn.params["dimensions"], np.int64))
    return [graph.node("Squeeze", [ins[0], axes])]


def _broadcast_in_dim(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    shape, kept = eqn.params["shape"], eqn.params["broadcast_dimensions"]
    operand = eqn.invars[0].aval.shape
    x = ins[0]
    if len(operand) != len(shape):
        with_ones = [1] * len(shape)
        for axis, d in zip(kept, operand):
            with_ones[axis] = d
        x = graph.node("Reshape", [x, graph.shape(with_ones)])
    if tuple(operand) == tuple(shape):
        return [x]
    return [graph.node("Expand", [x, graph.shape(shape)])]


def _transpose(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    return [graph.node("Transpose", ins, perm=list(eqn.params["permutation"]))]


def _slice_node(graph: _Graph, x: str, starts, ends, axes, steps) -> str:
    as_const = lambda v: graph.const(np.asarray(v, np.int64))  # noqa: E731
    return graph.node("Slice", [x, as_const(starts), as_const(ends), as_const(axes),
                                as_const(steps)])


def _rev(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    axes = list(eqn.params["dimensions"])
    return [_slice_node(graph, ins[0], [-1] * len(axes), [_INT64_MIN] * len(axes), axes,
                        [-1] * len(axes))]


def _slice(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    starts, limits = eqn.params["start_indices"], eqn.params["limit_indices"]
    strides = eqn.params["strides"] or (1,) * len(starts)
    ends = [d if isinstance(d, int) else _INT64_MAX for d in limits]
    return [_slice_node(graph, ins[0], starts, ends, range(len(starts)), strides)]


def _concatenate(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    return [graph.node("Concat", ins, axis=eqn.params["dimension"])]


def _stack(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    axis = graph.const(np.asarray([eqn.params["axis"]], np.int64))
    return [graph.node("Concat", [graph.node("Unsqueeze", [x, axis]) for x in ins],
                       axis=eqn.params["axis"])]


def _reduce(op: str) -> Callable:
    def convert(graph: _Graph, eqn, ins: list[str]) -> list[str]:
        axes = graph.const(np.asarray(eqn.params["axes"], np.int64))
        return [graph.node(op, [ins[0], axes], keepdims=0)]
    return convert


def _dot_general(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    """An Einsum: the batch dimensions, then the left's free ones, then the right's."""
    (left_c, right_c), (left_b, right_b) = eqn.params["dimension_numbers"]
    left_rank, right_rank = (len(v.aval.shape) for v in eqn.invars)
    letters = iter(string.ascii_letters)
    left = [next(letters) for _ in range(left_rank)]
    right = [next(letters) for _ in range(right_rank)]
    for a, b in [*zip(left_c, right_c), *zip(left_b, right_b)]:
        right[b] = left[a]
    batch = [left[a] for a in left_b]
    free_left = [c for i, c in enumerate(left) if i not in (*left_c, *left_b)]
    free_right = [c for i, c in enumerate(right) if i not in (*right_c, *right_b)]
    equation = f"{''.join(left)},{''.join(right)}->{''.join(batch + free_left + free_right)}"
    out = graph.node("Einsum", ins, equation=equation)
    if eqn.outvars[0].aval.dtype != eqn.invars[0].aval.dtype:
        out = graph.node("Cast", [out], to=_onnx_type(eqn.outvars[0].aval.dtype))
    return [out]


def _conv(graph: _Graph, eqn, ins: list[str]) -> list[str]:
    """ONNX's Conv (NCHW input, OIHW kernel) between transposes from and to JAX's layouts."""
    p = eqn.params
    if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
        raise NotImplementedError("ONNX export: transposed or batch-grouped convolutions")
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    x = graph.node("Transpose", [ins[0]], perm=list(lhs_spec))
    kernel = graph.node("Transpose", [ins[1]], perm=list(rhs_spec))
    pads = [lo for lo, _ in p["padding"]] + [hi for _, hi in p["padding"]]
    y = graph.node("Conv", [x, kernel], strides=list(p["window_strides"]), pads=pads,
                   dilations=list(p["rhs_dilation"]), group=p["feature_group_count"])
    return [graph.node("Transpose", [y], perm=[int(i) for i in np.argsort(out_spec)])]


def _pool(op: str) -> Callable:
    """reduce_window_max / _sum over the middle axes of NHWC values as ONNX's NCHW pools."""
    def convert(graph: _Graph, eqn, ins: list[str]) -> list[str]:
        p = eqn.params
        window, strides, padding = p["window_dimensions"], p["window_strides"], p["padding"]
        rank = len(window)
        outer = (0, rank - 1)
        if any(window[a] != 1 or strides[a] != 1 or tuple(padding[a]) != (0, 0)
               for a in outer) or any(d != 1 for d in (*p["base_dilation"],
                                                       *p["window_dilation"])):
            raise NotImplementedError(f"ONNX export: {eqn.primitive.name} other than over "
                                      "the spatial axes of NHWC values")
        spatial = range(1, rank - 1)
        x = graph.node("Transpose", ins, perm=[0, rank - 1, *spatial])
        attrs = dict(kernel_shape=[window[a] for a in spatial],
                     strides=[strides[a] for a in spatial],
                     pads=[padding[a][0] for a in spatial] + [padding[a][1] for a in spatial])
        if op == "AveragePool":
            attrs["count_include_pad"] = 1
        y = graph.node(op, [x], **attrs)
        if op == "AveragePool":  # a sum: the mean times the window's size
            size = np.prod([window[a] for a in spatial])
            y = graph.node("Mul", [y, graph.const(np.asarray(size, _compute_dtype(
                eqn.invars[0].aval.dtype)))])
        return [graph.node("Transpose", [y], perm=[0, *range(2, rank), 1])]
    return convert


_CONVERTERS: dict[str, Callable[[_Graph, object, list[str]], list[str]]] = {
    **{name: _simple(op) for name, op in {
        "add": "Add", "mul": "Mul", "div": "Div", "min": "Min",
        "neg": "Neg", "log": "Log", "exp": "Exp", "logistic": "Sigmoid", "sqrt": "Sqrt",
        "abs": "Abs", "tanh": "Tanh", "erf": "Erf", "copy": "Identity", "copy_p": "Identity",
        "stop_gradient": "Identity", "gt": "Greater", "lt": "Less", "ge": "GreaterOrEqual",
        "le": "LessOrEqual", "eq": "Equal", "and": "And", "or": "Or", "not": "Not"}.items()},
    "square": lambda graph, eqn, ins: [graph.node("Mul", [ins[0], ins[0]])],
    "sub": _sub, "max": _max, "rsqrt": _rsqrt, "log1p": _log1p, "erfc": _erfc,
    "integer_pow": _integer_pow, "select_n": _select_n,
    "clamp": _clamp, "convert_element_type": _convert, "reshape": _reshape,
    "squeeze": _squeeze, "broadcast_in_dim": _broadcast_in_dim, "transpose": _transpose,
    "rev": _rev, "slice": _slice, "concatenate": _concatenate, "stack": _stack,
    "reduce_sum": _reduce("ReduceSum"), "reduce_max": _reduce("ReduceMax"),
    "reduce_min": _reduce("ReduceMin"), "dot_general": _dot_general,
    "conv_general_dilated": _conv, "reduce_window_max": _pool("MaxPool"),
    "reduce_window_sum": _pool("AveragePool"),
    **{name: _inline for name in ("pjit", "jit", "closed_call", "core_call", "custom_jvp_call",
                                  "custom_vjp_call", "custom_vjp_call_jaxpr", "remat",
                                  "checkpoint")},
}
