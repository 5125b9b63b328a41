"""Transducer topologies: the arcs that leave a lattice point, and the per-row values they use.

Every variant is a lattice over the points ``(t, u)``, ``0 <= t < T_b``, ``0 <= u <= U_b``,
with ``alpha(0, 0) = 0``, and arcs ``(t, u) -> (t + dt, u + du)`` weighted by per-row
log-probabilities. A path ends by an *end arc* landing exactly on ``(T_b, U_b)``. The loss is
``-log`` of the summed weight of all complete paths, and the gradient coefficient of a row's
value is the posterior mass of the arcs that use it.

Per-row values (``width`` of them, in this order): one log-probability per blank symbol,
the emission of the next label ``y_b[u]`` (``-inf`` at ``u = U_b``), and for TDT one per
duration. Variants (``variant=``):

``"rnnt"`` (standard)
    blank ``(t, u) -> (t+1, u)``, emission ``(t, u) -> (t, u+1)``; the path ends with the
    blank from ``(T_b-1, U_b)``.
``"modified"`` (k2's ``rnnt_type="modified"``, one symbol per frame)
    blank ``(t, u) -> (t+1, u)``, emission ``(t, u) -> (t+1, u+1)``; the path ends on
    ``(T_b, U_b)`` whatever its last symbol (so it needs ``U_b <= T_b``).
``"multiblank"`` (Xu et al. 2022; NeMo's ``MultiblankRNNTLossPytorch``)
    the standard arcs plus big blank ``i`` (vocabulary id ``blank - 1 - i``, duration
    ``big_blank_durations[i]``) ``(t, u) -> (t+d_i, u)``; the path ends with a (big) blank
    landing exactly on ``(T_b, U_b)``. All log-probabilities are ``log_softmax - sigma``.
``"tdt"`` (Token-and-Duration Transducer, Xu et al. 2023; NeMo's ``TDTLossPytorch``)
    the logits are ``V`` token logits then ``D`` duration logits; token and duration
    log-softmaxes are separate, ``sigma`` is subtracted from the token log-probabilities. For
    each duration ``d`` of ``durations``: the label with duration ``d`` ``(t, u) -> (t+d, u+1)``
    (weight ``lp_y + lp_dur(d)``), and for ``d >= 1`` the blank ``(t, u) -> (t+d, u)``; the
    path ends with a blank landing exactly on ``(T_b, U_b)``. ``omega`` mixes in the
    standard RNN-T loss of the token log-probabilities (``sigma`` included):
    ``(1 - omega) L_tdt + omega L_rnnt``
    (NeMo draws the RNN-T loss with probability omega per call; this is its expectation,
    deterministic).

``delay_penalty`` (k2, ``rnnt``/``modified``): every emission at frame ``t`` gets
``delay_penalty * ((T_b - 1) / 2 - t)`` added to its log-probability (the loss includes it).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

VARIANTS = ("rnnt", "modified", "multiblank", "tdt")
MAX_DURATIONS = 30  # TDT durations (the kernels' arc table holds 64 arcs, 40 values per row)
MAX_BIG_BLANKS = 30  # multi-blank big blanks


@dataclass(frozen=True)
class Arc:
    """An arc kind: weight ``value[w1] (+ value[w2])``, move ``(dt, du)``, may end a path."""

    w1: int
    w2: int  # -1: none
    dt: int
    du: int
    can_end: bool


@dataclass(frozen=True)
class Topology:
    """A variant with its parameters (see the module docstring)."""

    variant: str = "rnnt"
    blanks: tuple = (0,)  # vocabulary ids of the blank symbols (blanks[0]: the standard one)
    blank_durations: tuple = (1,)  # frames each blank advances
    durations: tuple = ()  # TDT durations (D values); () for the other variants
    sigma: float = 0.0
    omega: float = 0.0
    delay_penalty: float = 0.0

    @property
    def standard(self) -> bool:
        """The plain RNN-T (the specialised kernels and NumPy paths)."""
        return self.variant == "rnnt" and self.delay_penalty == 0.0

    @property
    def lean_rows(self) -> bool:
        """One blank, no duration logits, no omega: the row kernels' lean instantiation."""
        return len(self.blanks) == 1 and not self.durations and self.omega == 0.0

    @property
    def width(self) -> int:
        """Per-row values: blanks, the emission, durations."""
        return len(self.blanks) + 1 + len(self.durations)

    @property
    def emit(self) -> int:
        """Index of the emission among the per-row values."""
        return len(self.blanks)

    @property
    def lse_width(self) -> int:
        """Logsumexps kept per row: the tokens', and TDT's durations'."""
        return 2 if self.durations else 1

    @property
    def n_durations(self) -> int:
        return len(self.durations)

    def vocab(self, n_logits: int) -> int:
        """Token logits among ``n_logits`` per row (TDT: without the duration logits)."""
        return n_logits - len(self.durations)

    def arcs(self) -> tuple[Arc, ...]:
        e = self.emit
        if self.variant == "tdt":
            out = []
            for n, d in enumerate(self.durations):
                if d >= 1:
                    out.append(Arc(0, e + 1 + n, d, 0, True))
                out.append(Arc(e, e + 1 + n, d, 1, False))
            return tuple(out)
        blanks = tuple(Arc(i, -1, d, 0, True) for i, d in enumerate(self.blank_durations))
        return blanks + (Arc(e, -1, 1 if self.variant == "modified" else 0, 1,
                             self.variant == "modified"),)

    @property
    def max_dt(self) -> int:
        return max(a.dt for a in self.arcs())

    def arc_table(self) -> tuple:
        """The arcs as the kernel's flat int table: (w1, w2, dt, du, can_end) per arc."""
        return tuple(x for a in self.arcs() for x in (a.w1, a.w2, a.dt, a.du, int(a.can_end)))

    def rnnt_part(self) -> "Topology":
        """TDT's mixed-in standard RNN-T (its token values: blank 0, emission 1)."""
        return Topology("rnnt", self.blanks, (1,))


def _int_tuple(name: str, values) -> tuple:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name}: expected a sequence of ints, got {type(values).__name__}")
    out = tuple(values)
    for x in out:
        if isinstance(x, bool) or not isinstance(x, numbers.Integral):
            raise TypeError(f"{name}: expected ints, got {type(x).__name__}")
    return tuple(int(x) for x in out)


def check_variant_args(variant: str = "rnnt", *, delay_penalty=0.0, durations=None,
                       big_blank_durations=None, sigma=0.0, omega=0.0) -> dict:
    """The checks of a variant's arguments that need no logits (name, values, which
    arguments belong to it); returns them normalised. Arguments of other variants must
    stay at their defaults (ValueError naming them otherwise)."""
    from . import _validate as v
    v.check_choice("variant", variant, VARIANTS)
    delay_penalty = v.check_scalar("delay_penalty", delay_penalty)
    sigma = v.check_scalar("sigma", sigma)
    omega = v.check_scalar("omega", omega)
    if omega > 1:
        raise ValueError(f"omega: expected a weight in [0, 1], got {omega}")
    given = {"delay_penalty": delay_penalty != 0.0, "durations": durations is not None,
             "big_blank_durations": big_blank_durations is not None, "sigma": sigma != 0.0,
             "omega": omega != 0.0}
    allowed = {"rnnt": ("delay_penalty",), "modified": ("delay_penalty",),
               "multiblank": ("big_blank_durations", "sigma"),
               "tdt": ("durations", "sigma", "omega")}[variant]
    for name, is_set in given.items():
        if is_set and name not in allowed:
            raise ValueError(f"{name}: not an argument of variant={variant!r} (only "
                             f"{', '.join(allowed)})")
    durs, big = (), ()
    if variant == "tdt":
        if durations is None:
            raise ValueError("durations: variant='tdt' needs the duration set, "
                             "e.g. [0, 1, 2, 3, 4]")
        durs = _int_tuple("durations", durations)
        if len(set(durs)) != len(durs) or min(durs, default=-1) < 0 or not {0, 1} <= set(durs) \
                or len(durs) > MAX_DURATIONS:
            raise ValueError(f"durations: expected at most {MAX_DURATIONS} distinct "
                             f"non-negative ints containing 0 and 1, got {list(durs)}")
    if variant == "multiblank":
        big = _int_tuple("big_blank_durations", big_blank_durations or ())
        if any(d < 2 for d in big) or len(set(big)) != len(big) or len(big) > MAX_BIG_BLANKS:
            raise ValueError(f"big_blank_durations: expected at most {MAX_BIG_BLANKS} distinct "
                             f"ints >= 2, got {list(big)}")
    return dict(variant=variant, delay_penalty=delay_penalty, durations=durs,
                big_blank_durations=big, sigma=sigma, omega=omega)


def make_topology(variant: str, n_logits: int, blank, *, delay_penalty=0.0, durations=None,
                  big_blank_durations=None, sigma=0.0, omega=0.0) -> Topology:
    """Validate a variant's arguments (``check_variant_args``, then what needs the logits).
    ``n_logits``: logits per row (TDT: ``V + D``, token logits first); ``blank``: the blank
    id among the ``V`` token logits (negative counts from their end)."""
    from . import _validate as v
    a = check_variant_args(variant, delay_penalty=delay_penalty, durations=durations,
                           big_blank_durations=big_blank_durations, sigma=sigma, omega=omega)
    if variant == "tdt":
        durs = a["durations"]
        if n_logits - len(durs) < 2:
            raise ValueError(f"durations: {len(durs)} duration logits leave "
                             f"{n_logits - len(durs)} token logits of the {n_logits} per row; "
                             f"expected at least 2")
        blank = v.normalize_blank(blank, n_logits - len(durs))
        return Topology("tdt", (blank,), (), durs, a["sigma"], a["omega"])
    blank = v.normalize_blank(blank, n_logits)
    if variant == "multiblank":
        big = a["big_blank_durations"]
        ids = tuple(blank - 1 - i for i in range(len(big)))
        if ids and ids[-1] < 0:
            raise ValueError(f"big_blank_durations: {len(big)} big blanks take the ids "
                             f"blank - 1 ... blank - {len(big)}; blank={blank} leaves too few")
        return Topology("multiblank", (blank,) + ids, (1,) + big, (), a["sigma"])
    return Topology(variant, (blank,), (1,), (), 0.0, 0.0, a["delay_penalty"])


# ------------------------------------------------------------------ adapters' encoding
_FLOAT_ARGS = ("delay_penalty", "sigma", "omega")
_LIST_ARGS = ("durations", "big_blank_durations")


def encode_variant(variant="rnnt", delay_penalty=0.0, durations=None, big_blank_durations=None,
                   sigma=0.0, omega=0.0) -> str:
    """The variant arguments as one string (framework ops take strings, not dicts): e.g.
    ``"tdt;durations=0,1,2;sigma=0.05"``; ``"rnnt"`` for the defaults. Types are checked
    here (by name); values by ``make_topology`` when decoded."""
    from . import _validate as v
    if not isinstance(variant, str):
        raise TypeError(f"variant: expected a str, got {type(variant).__name__}")
    if ";" in variant or "=" in variant:
        raise ValueError(f"variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")
    parts = [variant]
    floats = {"delay_penalty": delay_penalty, "sigma": sigma, "omega": omega}
    for name, x in floats.items():
        x = v.check_scalar(name, x, minimum=-float("inf"))
        if x != 0.0:
            parts.append(f"{name}={x!r}")
    for name, x in (("durations", durations), ("big_blank_durations", big_blank_durations)):
        if x is not None:
            parts.append(f"{name}={','.join(str(d) for d in _int_tuple(name, x))}")
    return ";".join(parts)


def decode_variant(spec: str) -> dict:
    """``encode_variant``'s inverse: the keyword arguments of ``make_topology``."""
    variant, *items = spec.split(";")
    out = {"variant": variant}
    for item in items:
        name, _, value = item.partition("=")
        if name in _FLOAT_ARGS:
            out[name] = float(value)
        elif name in _LIST_ARGS:
            out[name] = tuple(int(d) for d in value.split(",") if d)
        else:
            raise ValueError(f"variant: unknown argument {name!r} in {spec!r}")
    return out
