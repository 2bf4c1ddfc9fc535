"""A seeded generator of random ONNX DAGs that mixes the rule-table ops the way exporters do.

Convolutions (dense, grouped, depthwise, padded or not, a weight shared by two calls), BatchNorm,
activations, residual sums, Concat/Split/Slice on channels, squeeze-excitation, pools, channel-last
MLP blocks (Transpose -> LayerNorm or its decomposition -> MatMul + Add -> GELU or its Erf form ->
MatMul + Add -> Transpose), ops without a rule (LRN), and a Flatten or ``x.view(x.size(0), -1)`` ->
Gemm head, at opsets 13-21. Weights carry random dead filters (with zero and with non-zero bias or
BN shift), dead input columns, partial filters and whole dead layers, either as zeros in the
weights or as a separate float/uint8/bool mask.

The families that once made wrong or invalid models (issue 22): order-dependent ops over channels
after a ReLU (ties: Hardmax, ArgMax/ArgMin, TopK, CumSum), ops of another domain with standard
names (com.microsoft Gelu, FusedConv), one weight reused by a chain of calls (ALBERT-like, shared
directly or through Identity as the legacy exporter writes it), zero-sized tensors (an empty channel
Slice concatenated back, an empty constant), and initializers that are also graph inputs.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

OPSETS = (13, 15, 17, 18, 20, 21)


class RandomGraph:
    def __init__(self, seed: int, steps: int | None = None):
        self.rng = np.random.default_rng(seed)
        self.opset = int(self.rng.choice(OPSETS))
        self.nodes: list = []
        self.inits: dict[str, np.ndarray] = {}
        self.masks: dict[str, np.ndarray] = {}
        self.use_masks = bool(self.rng.random() < 0.4)
        self.mask_dtype = self.rng.choice([np.float32, np.uint8, np.bool_])
        self.shapes: dict[str, list] = {"x": ["N", 4, 8, 8]}
        self.pool: list[str] = ["x"]
        self.provable: list[tuple[str, int, str]] = []  # (weight, live rows, relu output) removal must reach
        self.outputs: list[str] = []
        self.domains: set[str] = set()
        self.opaque: set[str] = set()  # tensors ONNX shape inference cannot know (after another domain's op)
        self._n = 0
        for _ in range(steps if steps is not None else int(self.rng.integers(4, 12))):
            self.step()
        self.head()
        self.overridable: list[str] = []  # initializers that are also graph inputs (older converters)
        if self.rng.random() < 0.1:
            self.overridable = [k for k in self.inits if self.rng.random() < 0.5]

    # ------------------------------------------------------------------ building blocks
    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def const(self, value: np.ndarray, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.inits[name] = np.asarray(value)
        return name

    def op(self, op: str, inputs: list[str], shape: list | None, outputs: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name("n"), **attrs))
        if self.opaque.intersection(inputs):
            self.opaque.update(outs)
        if shape is not None:
            for o in outs:
                self.shapes[o] = shape
        return outs[0] if outputs == 1 else outs

    def four_d(self, min_hw: int = 1) -> str:
        cands = [t for t in self.pool if len(self.shapes[t]) == 4 and self.shapes[t][2] >= min_hw]
        return cands[int(self.rng.integers(len(cands)))]

    def channels(self, t: str) -> int:
        return self.shapes[t][1]

    def weight(self, shape: tuple, dead_rows: np.ndarray | None = None, dead_cols: np.ndarray | None = None,
               prefix: str = "w", row_axis: int = 0, col_axis: int = 1) -> str:
        w = (self.rng.standard_normal(shape) * 0.5).astype(np.float32)
        zero = np.zeros(shape, dtype=bool)
        if dead_rows is not None and len(dead_rows):
            np.moveaxis(zero, row_axis, 0)[dead_rows] = True
        if dead_cols is not None and len(dead_cols):
            np.moveaxis(zero, col_axis, 0)[dead_cols] = True
        if self.rng.random() < 0.3:  # partial filters
            zero |= self.rng.random(shape) < 0.3
        name = self.const(w, prefix)
        if self.use_masks and zero.any():
            self.masks[name] = (~zero).astype(self.mask_dtype)
        else:
            self.inits[name] = np.where(zero, 0, w).astype(np.float32)
        return name

    def dead(self, n: int) -> np.ndarray:
        r = self.rng.random()
        if r < 0.05:
            return np.arange(n)  # a whole layer dead
        if r < 0.3:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.rng.random(n) < 0.4)

    def bias(self, n: int, dead: np.ndarray) -> np.ndarray:
        b = (self.rng.standard_normal(n) * 0.3).astype(np.float32)
        if self.rng.random() < 0.6:
            b[dead] = 0  # zero bias: a dead filter outputs exactly 0
        return b

    # ------------------------------------------------------------------ ops
    def conv(self, x: str, cout: int | None = None, k: int | None = None, group: int = 1, track: bool = True,
             same: bool = False) -> str:
        n, cin, h, w = self.shapes[x]
        cout = cout or int(self.rng.choice([4, 6, 8, 12]))
        if group > 1:
            cout = cin if group == cin else cout - cout % group or group
        k = k or int(self.rng.choice([1, 3]))
        pad = k // 2 if same or self.rng.random() < 0.85 else 0
        if h - k + 1 + 2 * pad < 1:
            pad = k // 2
        dead = self.dead(cout)
        dead_cols = np.flatnonzero(self.rng.random(cin // group) < 0.2) if self.rng.random() < 0.3 else None
        wname = self.weight((cout, cin // group, k, k), dead, dead_cols)
        inputs = [x, wname]
        if self.rng.random() < 0.7:
            inputs.append(self.const(self.bias(cout, dead), "b"))
        hw = h - k + 1 + 2 * pad
        y = self.op("Conv", inputs, [n, cout, hw, hw], pads=[pad] * 4, group=group)
        if track and group == 1 and 0 < len(dead) < cout and dead_cols is None:  # (a non-zero bias too:
            # its constant reaches a plain Conv, folded into its bias or, through padding, as a map)
            self._pending = (wname, cout - len(dead), y)
        return y

    def step(self) -> None:
        self._pending = None
        choice = self.rng.choice(["conv", "conv_bn_act", "conv_relu_conv", "grouped", "depthwise", "residual",
                                  "concat", "split", "slice", "se", "pool", "mlp", "unknown", "shared", "pad",
                                  "resize", "reduce", "prelu", "groupnorm", "shuffle", "attention", "order",
                                  "domain", "loop", "empty", "dwchain"])
        x = self.four_d()
        c = self.channels(x)
        if choice == "conv":
            self.pool.append(self.conv(x))
        elif choice == "conv_bn_act":
            y = self.conv(x, track=False)
            cout = self.channels(y)
            scale = (self.rng.random(cout) + 0.5).astype(np.float32)
            if self.rng.random() < 0.3:
                scale[self.rng.random(cout) < 0.3] = 0  # a channel ticket zeroes BN scale
            params = [self.const(scale), self.const((self.rng.standard_normal(cout) * 0.2).astype(np.float32)),
                      self.const((self.rng.standard_normal(cout) * 0.2).astype(np.float32)),
                      self.const((self.rng.random(cout) + 0.5).astype(np.float32))]
            bn = self.op("BatchNormalization", [y, *params], self.shapes[y])
            acts = ["Relu", "LeakyRelu", "Sigmoid", "Clip", "Tanh", "Elu"] + (["HardSwish"] if self.opset >= 14 else [])
            act = str(self.rng.choice(acts))
            extra = [self.const(np.float32(0)), self.const(np.float32(6))] if act == "Clip" else []
            self.pool.append(self.op(act, [bn, *extra], self.shapes[y]))
        elif choice == "conv_relu_conv":
            y = self.conv(x)
            pending = self._pending
            r = self.op("Relu", [y], self.shapes[y])
            z = self.conv(r, track=False)
            if pending is not None and x not in self.opaque:  # (removal needs shapes)
                self.provable.append((pending[0], pending[1], r))
            self.pool.append(z)
        elif choice == "grouped" and c % 2 == 0:
            self.pool.append(self.conv(x, cout=int(self.rng.choice([c, 2 * c])), group=2))
        elif choice == "shuffle" and any(c % g == 0 and c > g for g in (2, 3, 4)):
            self.pool.append(self.shuffle(x))
        elif choice == "depthwise":
            self.pool.append(self.conv(x, group=c, k=3))
        elif choice == "residual":
            y = self.conv(x, cout=c, track=False, same=True)
            self.pool.append(self.op(str(self.rng.choice(["Add", "Sum", "Max", "Mul"])), [x, y], self.shapes[x]))
        elif choice == "concat":
            y = self.conv(x, track=False, same=True)
            n, _, h, w = self.shapes[x]
            self.pool.append(self.op("Concat", [x, y], [n, c + self.channels(y), h, w], axis=1))
        elif choice == "split" and c >= 2:
            cut = int(self.rng.integers(1, c))
            n, _, h, w = self.shapes[x]
            sizes = [cut, c - cut]
            parts = self.op("Split", [x, self.const(np.array(sizes, np.int64))], None, outputs=2, axis=1)
            for p, s in zip(parts, sizes, strict=True):
                self.shapes[p] = [n, s, h, w]
                self.pool.append(p)
        elif choice == "slice" and c >= 3:
            lo = int(self.rng.integers(0, c - 1))
            hi = int(self.rng.integers(lo + 1, c + 1))
            n, _, h, w = self.shapes[x]
            ins = [x, self.const(np.array([lo], np.int64)), self.const(np.array([hi], np.int64)),
                   self.const(np.array([1], np.int64))]
            self.pool.append(self.op("Slice", ins, [n, hi - lo, h, w]))
        elif choice == "se":
            n = self.shapes[x][0]
            g = self.op("GlobalAveragePool", [x], [n, c, 1, 1])
            s1 = self.conv(g, cout=max(c // 2, 1), k=1, track=False)
            r = self.op("Relu", [s1], self.shapes[s1])
            s2 = self.conv(r, cout=c, k=1, track=False)
            sg = self.op("Sigmoid", [s2], self.shapes[s2])
            self.pool.append(self.op("Mul", [x, sg], self.shapes[x]))
        elif choice == "pool" and self.shapes[x][2] >= 4:
            n, _, h, w = self.shapes[x]
            op = str(self.rng.choice(["MaxPool", "AveragePool"]))
            self.pool.append(self.op(op, [x], [n, c, h // 2, w // 2], kernel_shape=[2, 2], strides=[2, 2]))
        elif choice == "mlp":
            self.pool.append(self.mlp(x))
        elif choice == "attention" and self.shapes[x][2] * self.shapes[x][3] <= 64:
            self.pool.append(self.attention(x))
        elif choice == "unknown":
            self.pool.append(self.op("LRN", [x], self.shapes[x], size=3))
        elif choice == "shared":
            w = self.weight((c, c, 1, 1), self.dead(c))
            a = self.op("Conv", [x, w], self.shapes[x])
            r = self.op("Relu", [a], self.shapes[x])
            self.pool.append(self.op("Conv", [r, w], self.shapes[x]))  # one module called twice
        elif choice == "pad":
            n, _, h, w = self.shapes[x]
            ins = [x, self.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))]
            if self.rng.random() < 0.5:
                ins.append(self.const(np.float32(self.rng.choice([0.0, 0.5]))))
            self.pool.append(self.op("Pad", ins, [n, c, h + 2, w + 2]))
        elif choice == "resize":
            n, _, h, w = self.shapes[x]
            if h <= 8:
                ins = [x, "", self.const(np.array([1, 1, 2, 2], np.float32))]
                self.pool.append(self.op("Resize", ins, [n, c, 2 * h, 2 * w], mode="nearest"))
        elif choice == "reduce":
            n = self.shapes[x][0]
            axes = [2, 3]
            if self.opset >= 18:
                y = self.op("ReduceMean", [x, self.const(np.array(axes, np.int64))], [n, c, 1, 1], keepdims=1)
            else:
                y = self.op("ReduceMean", [x], [n, c, 1, 1], axes=axes, keepdims=1)
            self.pool.append(y)
        elif choice == "groupnorm" and self.opset >= 18:
            groups = int(self.rng.choice([g for g in (1, 2, 4) if c % g == 0]))
            params = c if self.opset >= 21 else groups
            ins = [x, self.const((self.rng.random(params) + 0.5).astype(np.float32)),
                   self.const((self.rng.standard_normal(params) * 0.2).astype(np.float32))]
            self.pool.append(self.op("GroupNormalization", ins, self.shapes[x], num_groups=groups))
        elif choice == "groupnorm":  # below opset 18 the exporters write it as Reshape -> InstanceNorm -> Reshape
            groups = int(self.rng.choice([g for g in (1, 2) if c % g == 0]))
            n, _, h, w = self.shapes[x]
            r = self.op("Reshape", [x, self.const(np.array([0, groups, -1], np.int64))], [n, groups, c * h * w // groups])
            m = self.op("InstanceNormalization", [r, self.const(np.ones(groups, np.float32)),
                                                  self.const(np.zeros(groups, np.float32))], [n, groups, c * h * w // groups])
            back = self.op("Reshape", [m, self.op("Shape", [x], [4])], self.shapes[x])
            scaled = self.op("Mul", [back, self.const((self.rng.random((c, 1, 1)) + 0.5).astype(np.float32))], self.shapes[x])
            self.pool.append(self.op("Add", [scaled, self.const((self.rng.standard_normal((c, 1, 1)) * 0.2)
                                                                .astype(np.float32))], self.shapes[x]))
        elif choice == "order":
            self.pool.append(self.order_dependent(x))
        elif choice == "domain":
            self.pool.append(self.other_domain(x))
        elif choice == "loop":
            self.pool.append(self.reused(x))
        elif choice == "empty":
            self.pool.append(self.empty(x))
        elif choice == "dwchain":
            self.pool.append(self.dw_chain(x))
        elif choice == "prelu":
            slope = (self.rng.random((c, 1, 1)) * 0.3).astype(np.float32)
            self.pool.append(self.op("PRelu", [x, self.const(slope)], self.shapes[x]))

    def act(self, x: str) -> str:
        acts = ["Relu", "Sigmoid", "Clip", "SiLU"] + (["HardSwish"] if self.opset >= 14 else [])
        act = str(self.rng.choice(acts))
        if act == "SiLU":  # as the exporters write it
            return self.op("Mul", [x, self.op("Sigmoid", [x], self.shapes[x])], self.shapes[x])
        extra = [self.const(np.float32(0)), self.const(np.float32(6))] if act == "Clip" else []
        return self.op(act, [x, *extra], self.shapes[x])

    def dead_rows(self, weight: str) -> np.ndarray:
        """The all-zero output rows of ``weight`` once its mask (if any) is applied."""
        w = self.inits[weight] * self.masks.get(weight, 1)
        return np.flatnonzero(~w.reshape(len(w), -1).any(axis=1))

    def spread(self, x: str) -> str:
        """x -> act -> a zero-padded depthwise conv or AveragePool (constants become images) -> maybe BN
        -> act."""
        a = self.act(x)
        c = self.channels(a)
        if self.rng.random() < 0.75:
            d = self.conv(a, group=c, k=3, same=True, track=False)
        else:
            d = self.op("AveragePool", [a], self.shapes[a], kernel_shape=[3, 3], pads=[1] * 4, count_include_pad=1)
        if self.rng.random() < 0.5:
            params = [self.const((self.rng.random(c) + 0.5).astype(np.float32)),
                      self.const((self.rng.standard_normal(c) * 0.2).astype(np.float32)),
                      self.const((self.rng.standard_normal(c) * 0.2).astype(np.float32)),
                      self.const((self.rng.random(c) + 0.5).astype(np.float32))]
            d = self.op("BatchNormalization", [d, *params], self.shapes[d])
        return self.act(d)

    def dw_chain(self, x: str) -> str:
        """An inverted-residual block: 1x1 conv (dead filters whose bias stays: constants) -> act ->
        zero-padded depthwise conv or AveragePool (the constants become images) -> BN -> act; maybe a
        second such block whose images meet these at an Add (a channel goes where both are dead), or
        the constants concatenated beside their images and read by a padded depthwise conv (GhostNet);
        maybe a squeeze-excitation gate; a Conv reads them. Every dead filter that no live channel
        meets must go (the chain is written again for them, a gate's rows with it)."""
        y = self.conv(x, k=1, same=True)
        w = self.nodes[-1].input[1]
        c = self.channels(y)
        z = self.spread(y)
        dead = self.dead_rows(w)
        weights = [w]
        kind = self.rng.choice(["plain", "meet", "ghost"], p=[0.5, 0.25, 0.25])
        if kind == "meet":
            y2 = self.conv(x, cout=c, k=1, same=True)
            weights.append(self.nodes[-1].input[1])
            dead = np.intersect1d(dead, self.dead_rows(weights[-1]))
            z = self.op("Add", [z, self.spread(y2)], self.shapes[z])
        elif kind == "ghost":
            n, _, h, w_ = self.shapes[z]
            cat = self.op("Concat", [self.act(y), z], [n, 2 * c, h, w_], axis=1)
            z = self.act(self.conv(cat, group=2 * c, k=3, same=True, track=False))
        if self.rng.random() < 0.3:
            n, cz = self.shapes[z][0], self.channels(z)
            g = self.op("GlobalAveragePool", [z], [n, cz, 1, 1])
            s1 = self.act(self.conv(g, cout=max(cz // 2, 1), k=1, track=False))
            sg = self.op("Sigmoid", [self.conv(s1, cout=cz, k=1, track=False)], self.shapes[g])
            z = self.op("Mul", [z, sg], self.shapes[z])
        out = self.conv(z, k=int(self.rng.choice([1, 3])), track=False)
        if x not in self.opaque:
            self.provable += [(wt, c - len(dead), y) for wt in weights]
            self.outputs.append(out)  # (read, whatever the later steps pick)
        return out

    def order_dependent(self, x: str) -> str:
        """An op that reads channel positions, after a ReLU (ties: many zeros), over the channel axis."""
        n, c, h, w = self.shapes[x]
        r = self.op("Relu", [x], self.shapes[x])
        kind = self.rng.choice(["Hardmax", "ArgMax", "ArgMin", "TopK", "CumSum"])
        if kind == "Hardmax":
            return self.op("Hardmax", [r], self.shapes[x], axis=1)
        if kind in ("ArgMax", "ArgMin"):
            i = self.op(str(kind), [r], None, axis=1, keepdims=1, select_last_index=int(self.rng.integers(2)))
            return self.op("Cast", [i], [n, 1, h, w], to=TensorProto.FLOAT)
        if kind == "TopK":
            k = int(min(c, self.rng.integers(1, 4)))
            values, _ = self.op("TopK", [r, self.const(np.array([k], np.int64))], [n, k, h, w], outputs=2, axis=1)
            return values
        return self.op("CumSum", [r, self.const(np.array(1, np.int64))], self.shapes[x],
                       reverse=int(self.rng.integers(2)))

    def other_domain(self, x: str) -> str:
        """An op of another domain whose name ONNX also uses (ONNX Runtime runs them)."""
        self.domains.add("com.microsoft")
        if self.rng.random() < 0.5:
            y = self.name("gelu")
            self.nodes.append(helper.make_node("Gelu", [x], [y], name=self.name("n"), domain="com.microsoft"))
            self.shapes[y] = self.shapes[x]
            self.opaque.add(y)
            return y
        n, cin, h, w = self.shapes[x]
        cout = int(self.rng.choice([4, 8]))
        dead = self.dead(cout)
        inputs = [x, self.weight((cout, cin, 3, 3), dead), self.const(self.bias(cout, dead), "b")]
        y = self.name("fusedconv")
        self.nodes.append(helper.make_node("FusedConv", inputs, [y], name=self.name("n"), domain="com.microsoft",
                                           activation="Relu", pads=[1] * 4))
        self.shapes[y] = [n, cout, h, w]
        self.opaque.add(y)
        return y

    def reused(self, x: str) -> str:
        """One layer's weights called 2-4 times in a chain (ALBERT, a module in a Python loop): read
        directly, or through one Identity per call as the legacy exporter writes it."""
        c = self.channels(x)
        k = int(self.rng.choice([1, 3]))
        w = self.weight((c, c, k, k), self.dead(c))
        b = self.const(self.bias(c, np.zeros(0, int)), "b") if self.rng.random() < 0.5 else None
        through_identity = self.rng.random() < 0.5
        y = x
        for _ in range(int(self.rng.integers(2, 5))):
            wi = self.op("Identity", [w], None) if through_identity else w
            bi = (self.op("Identity", [b], None) if through_identity else b) if b is not None else None
            a = self.op("Conv", [y, wi] + ([bi] if bi else []), self.shapes[x], pads=[k // 2] * 4)
            y = self.op("Relu", [a], self.shapes[x])
        return y

    def empty(self, x: str) -> str:
        """Zero-sized tensors: an empty channel Slice concatenated back, or a Split with an empty part."""
        n, c, h, w = self.shapes[x]
        if self.rng.random() < 0.5:
            at = int(self.rng.integers(0, c + 1))
            ins = [x, self.const(np.array([at], np.int64)), self.const(np.array([at], np.int64)),
                   self.const(np.array([1], np.int64))]
            z = self.op("Slice", ins, [n, 0, h, w])
            return self.op("Concat", [x, z] if self.rng.random() < 0.5 else [z, x], self.shapes[x], axis=1)
        sizes = [c, 0] if self.rng.random() < 0.5 else [0, c]
        parts = self.op("Split", [x, self.const(np.array(sizes, np.int64))], None, outputs=2, axis=1)
        for p, s in zip(parts, sizes, strict=True):
            self.shapes[p] = [n, s, h, w]
        return parts[sizes.index(c)]

    def mlp(self, x: str) -> str:
        """Channel-last MLP with a residual: the hidden neurons are the removable channels."""
        n, c, h, w = self.shapes[x]
        t = self.op("Transpose", [x], [n, h, w, c], perm=[0, 2, 3, 1])
        ln = self.layernorm(t, c)
        hidden = 2 * c
        dead = self.dead(hidden)
        w1 = self.weight((c, hidden), dead, None, row_axis=1, col_axis=0)
        hb = self.op("Add", [self.op("MatMul", [ln, w1], [n, h, w, hidden]), self.const(self.bias(hidden, dead))],
                     [n, h, w, hidden])
        g = self.gelu(hb)
        w2 = self.weight((hidden, c), None, None)
        o = self.op("Add", [self.op("MatMul", [g, w2], [n, h, w, c]), self.const(self.bias(c, np.zeros(0, int)))],
                    [n, h, w, c])
        back = self.op("Transpose", [o], [n, c, h, w], perm=[0, 3, 1, 2])
        return self.op("Add", [x, back], [n, c, h, w])

    def attention(self, x: str) -> str:
        """Self-attention over x's positions as tokens, with a residual: q/k/v projections (one fused
        Linear cut as [3, heads, d] and unbound by Split or Slice, or three Linears) cut into heads,
        per-head scores and softmax, heads merged into an output projection. Heads die whole (q, k and
        v rows), in the output projection's columns, in part, or not at all."""
        n, c, h, w = self.shapes[x]
        t_len, heads, d = h * w, int(self.rng.choice([1, 2, 4])), int(self.rng.choice([1, 2, 3]))
        inner = heads * d
        batch = int(self.rng.choice([0, -1]))
        tokens = self.op("Transpose", [self.op("Reshape", [x, self.const(np.array([0, c, t_len], np.int64))],
                                               [n, c, t_len])], [n, t_len, c], perm=[0, 2, 1])
        fate = self.rng.choice(["live", "dead", "proj", "partial"], heads)
        head_units = [np.arange(k * d, (k + 1) * d) for k in range(heads)]

        def rows(parts: str) -> np.ndarray:
            """Dead output features of a projection holding ``parts`` (q, k, v blocks, in order): dead
            heads in every block, partial heads in q and k only (their softmax is uniform, not 0)."""
            picked = [s * inner + u for s, part in enumerate(parts) for k, u in enumerate(head_units)
                      if fate[k] == "dead" or (fate[k] == "partial" and part in "qk")]
            return np.concatenate(picked) if picked else np.zeros(0, np.int64)

        biases = []

        def linear(t: str, width: int, dead: np.ndarray) -> str:
            wname = self.weight((c, width), dead, None, row_axis=1, col_axis=0)
            biases.append(self.bias(width, dead))
            return self.op("Add", [self.op("MatMul", [t, wname], [n, t_len, width]), self.const(biases[-1])],
                           [n, t_len, width])

        if self.rng.random() < 0.5:  # fused q/k/v
            qkv = linear(tokens, 3 * inner, rows("qkv"))
            r5 = self.op("Reshape", [qkv, self.const(np.array([batch, t_len, 3, heads, d], np.int64))],
                         [n, t_len, 3, heads, d])
            p = self.op("Transpose", [r5], [3, n, heads, t_len, d], perm=[2, 0, 3, 1, 4])
            if self.rng.random() < 0.5:
                parts = self.op("Split", [p, self.const(np.array([1, 1, 1], np.int64))], [1, n, heads, t_len, d],
                                outputs=3, axis=0)
            else:
                parts = [self.op("Slice", [p, self.const(np.array([i], np.int64)), self.const(np.array([i + 1], np.int64)),
                                           self.const(np.array([0], np.int64))], [1, n, heads, t_len, d]) for i in range(3)]
            q, k, v = (self.op("Squeeze", [part, self.const(np.array([0], np.int64))], [n, heads, t_len, d]) for part in parts)
            kt = self.op("Transpose", [k], [n, heads, d, t_len], perm=[0, 1, 3, 2])
        else:
            target = self.const(np.array([batch, t_len, heads, d], np.int64))
            proj = [self.op("Reshape", [linear(tokens, inner, rows(part)), target], [n, t_len, heads, d]) for part in "qkv"]
            q = self.op("Transpose", [proj[0]], [n, heads, t_len, d], perm=[0, 2, 1, 3])
            kt = self.op("Transpose", [proj[1]], [n, heads, d, t_len], perm=[0, 2, 3, 1])
            v = self.op("Transpose", [proj[2]], [n, heads, t_len, d], perm=[0, 2, 1, 3])
        scores = self.op("MatMul", [self.op("Mul", [q, self.const(np.float32(d ** -0.5))], [n, heads, t_len, d]), kt],
                         [n, heads, t_len, t_len])
        out = self.op("MatMul", [self.op("Softmax", [scores], [n, heads, t_len, t_len], axis=-1), v], [n, heads, t_len, d])
        merged = self.op("Reshape", [self.op("Transpose", [out], [n, t_len, heads, d], perm=[0, 2, 1, 3]),
                                     self.const(np.array([batch, t_len, inner], np.int64))], [n, t_len, inner])
        proj_dead = np.concatenate([u for k, u in enumerate(head_units) if fate[k] == "proj"] or [np.zeros(0, np.int64)])
        wp = self.weight((inner, c), proj_dead, None, row_axis=0, col_axis=1)
        o = self.op("Add", [self.op("MatMul", [merged, wp], [n, t_len, c]), self.const(self.bias(c, np.zeros(0, int)))],
                    [n, t_len, c])
        back = self.op("Reshape", [self.op("Transpose", [o], [n, c, t_len], perm=[0, 2, 1]),
                                   self.const(np.array([0, c, h, w], np.int64))], [n, c, h, w])
        # provably removable: heads dead in the output projection, and heads dead in q, k and v whose
        # biases are zero there too (with a bias left, each feature is a different constant)
        bias = np.concatenate(biases).reshape(-1, inner)  # (q, k, v blocks)
        gone = sum(f == "proj" or (f == "dead" and not bias[:, u].any()) for f, u in zip(fate, head_units, strict=True))
        if x not in self.opaque:
            self.provable.append((wp, max(heads - gone, 1) * d, merged))
        return self.op("Add", [x, back], [n, c, h, w])

    def layernorm(self, t: str, c: int) -> str:
        shape = self.shapes[t]
        gamma = self.const((self.rng.random(c) + 0.5).astype(np.float32))
        beta = self.const((self.rng.standard_normal(c) * 0.1).astype(np.float32))
        if self.opset >= 17 and self.rng.random() < 0.6:
            return self.op("LayerNormalization", [t, gamma, beta], shape, axis=-1)
        mean_shape = [*shape[:-1], 1]  # the exporters' decomposition
        mean = self.reduce_mean(t, mean_shape)
        d = self.op("Sub", [t, mean], shape)
        var = self.reduce_mean(self.op("Pow", [d, self.const(np.float32(2))], shape), mean_shape)
        std = self.op("Sqrt", [self.op("Add", [var, self.const(np.float32(1e-5))], mean_shape)], mean_shape)
        normed = self.op("Div", [d, std], shape)
        return self.op("Add", [self.op("Mul", [normed, gamma], shape), beta], shape)

    def reduce_mean(self, t: str, shape: list) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", [t, self.const(np.array([-1], np.int64))], shape, keepdims=1)
        return self.op("ReduceMean", [t], shape, axes=[-1], keepdims=1)

    def gelu(self, t: str) -> str:
        shape = self.shapes[t]
        if self.opset >= 20 and self.rng.random() < 0.5:
            return self.op("Gelu", [t], shape)
        e = self.op("Erf", [self.op("Div", [t, self.const(np.float32(np.sqrt(2)))], shape)], shape)
        m = self.op("Mul", [t, self.op("Add", [e, self.const(np.float32(1))], shape)], shape)
        return self.op("Mul", [m, self.const(np.float32(0.5))], shape)

    def shuffle(self, x: str) -> str:
        """ShuffleNet's channel shuffle: view(N, g, C/g, H, W) -> transpose(1, 2) -> view(N, C, H, W),
        with targets either constant (0 copies the batch) or computed from Shape(x) as exporters do."""
        n, c, h, w = self.shapes[x]
        g = int(self.rng.choice([g for g in (2, 3, 4) if c % g == 0 and c > g]))
        if self.rng.random() < 0.5:
            t1 = self.const(np.array([0, g, c // g, h, w], np.int64))
            t2 = self.const(np.array([0, c, h, w], np.int64))
        else:
            s = self.op("Shape", [x], [4])
            b = self.op("Gather", [s, self.const(np.array([0], np.int64))], [1], axis=0)
            t1 = self.op("Concat", [b, self.const(np.array([g, c // g, h, w], np.int64))], [5], axis=0)
            t2 = self.op("Concat", [b, self.const(np.array([c, h, w], np.int64))], [4], axis=0)
        a = self.op("Reshape", [x, t1], [n, g, c // g, h, w])
        t = self.op("Transpose", [a], [n, c // g, g, h, w], perm=[0, 2, 1, 3, 4])
        return self.op("Reshape", [t, t2], [n, c, h, w])

    def head(self) -> None:
        x = self.pool[-1] if len(self.shapes[self.pool[-1]]) == 4 else self.four_d()
        n, c, h, w = self.shapes[x]
        if self.rng.random() < 0.5:
            x = self.op("GlobalAveragePool", [x], [n, c, 1, 1])
            h = w = 1
        feats = c * h * w
        if self.rng.random() < 0.5:
            f = self.op("Flatten", [x], [n, feats], axis=1)
        else:  # x.view(x.size(0), -1)
            s = self.op("Shape", [x], [4])
            b = self.op("Gather", [s, self.const(np.array(0, np.int64))], [], axis=0)
            u = self.op("Unsqueeze", [b, self.const(np.array([0], np.int64))], [1])
            tgt = self.op("Concat", [u, self.const(np.array([-1], np.int64))], [2], axis=0)
            f = self.op("Reshape", [x, tgt], [n, feats])
        classes = 5
        dead_in = np.flatnonzero(self.rng.random(feats) < 0.2) if self.rng.random() < 0.3 else None
        fw = self.weight((classes, feats), None, dead_in)
        self.outputs.append(self.op("Gemm", [f, fw, self.const(self.bias(classes, np.zeros(0, int)))],
                                    [n, classes], transB=1))
        if self.rng.random() < 0.25:
            self.outputs.append(self.four_d())

    def model(self):
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.shapes["x"])]
        inputs += [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(self.inits[k].dtype),
                                                 list(self.inits[k].shape)) for k in self.overridable]
        graph = helper.make_graph(
            self.nodes, "random", inputs,
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, self.shapes[o]) for o in self.outputs],
            [numpy_helper.from_array(v, k) for k, v in self.inits.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)]
                                  + [helper.make_opsetid(d, 1) for d in sorted(self.domains)])
        model.ir_version = 8
        return model
