"""Linear mode connectivity under the activation's symmetry group.

Two networks trained from different initialisations usually sit in different
basins of the loss; moving one of them by an element of its symmetry group
(paper Theorem 4.7: Perm(G) x O(S-1)^G for CoLU, Perm(C) for a component-wise
activation) often puts both in the same basin, so that the straight line
between their weights has a low loss barrier (paper Section 5.7, Appendix C
and F).

* :func:`match_weights` (Algorithm 1, weight matching) and
  :func:`match_states` (Algorithm 2, state matching) find one group element
  per hidden state and return an :class:`Alignment`;
  ``alignment.apply(model_b)`` gives a copy of model B, moved by those
  elements, that computes exactly the same function; it checks that on one
  small probe batch (``apply(model_b, probe=batch)``, or the first rows of
  the state-matching data, or random rows for the first ``nn.Linear``) and
  raises a ``ValueError`` naming the largest output difference if the
  hidden states it was given do not describe the model.
* :func:`interpolate`, :func:`loss_curve` and :func:`loss_barrier` evaluate the
  linear path between two models (eq. 11); :func:`kl_standard_normal` is the
  KL term for a VAE's KL barrier (Figure 14).

**Which tensors move.** A hidden state of width C is produced by some tensors
(rows of ``fc_in.weight``, entries of ``fc_in.bias``) and consumed by others
(columns of ``fc_out.weight``). An element ``P`` of the activation's group acts
on every one of them along the hidden axis (``W_in <- P W_in``,
``b_in <- P b_in``, ``W_out <- W_out P^T``). ``nn.Sequential`` stacks of
``nn.Linear`` and activation modules are read automatically (one activation
module object placed at several positions gives a hidden state at each, named
by its position); anything else is described by a *spec*
(:class:`HiddenState`)::

    spec = [
        HiddenState("enc", group="enc_act",                # the activation module's name
                    producers=["enc_in.weight", "enc_in.bias"],  # hidden axis 0 by default
                    consumers=["enc_out.weight"],                # hidden axis 1 by default
                    pre="enc_in", post="enc_act"),               # where match_states reads it
        HiddenState("dec", group="dec_act", producers=["dec_in.weight"],
                    consumers=["dec_out.weight"], pre="dec_in", post="dec_act"),
    ]

Entries of ``producers``/``consumers`` are ``state_dict`` keys, or
``(key, axis)`` pairs for other layouts (e.g. a conv weight consumed along
axis 1 is the default; a transposed layer may need axis 0). ``group`` is an
activation module, the name of one inside the model, a :class:`colu.ConeSpec`,
``"permutation"`` or ``"orthogonal"``. A plain dict with the same keys works
too, and so does the shorthand ``{"act": ("fc_in", "fc_out")}`` (activation
module name -> the layers before and after it), which is also read from a
model's ``HIDDEN_STATES`` class attribute when no spec is given.

**Groups.** Component-wise activations (ReLU, GELU, SiLU, ..., and CoLU with
``cone_dim=2``, unless ``componentwise=False`` makes its two-dimensional
cones) get permutations (Hungarian algorithm). CoLU gets cone
permutations times section rotations: the score of matching cone ``g`` of A to
cone ``h`` of B is their axis correlation plus the nuclear norm of their
section cross-correlation (the value of the best rotation, orthogonal
Procrustes); the Hungarian algorithm on these G x G scores picks the cone
permutation and each pair gets its Procrustes rotation. With a shared axis the
axis stays in place. RCoLU works in the basis ``(e, e_perp)`` of each group:
the all-ones component is matched like an axis and the complement is rotated.
The identity activation (``nn.Identity``, no activation between two linear
layers, ``CoLU(num_cones=0)``) commutes with all of O(C), matched by Procrustes.
The groups and their solvers are those of :mod:`colu.groups`.

**Objectives.** Both methods maximise a sum of inner products
``<X_A, P X_B>`` over the group: weight matching uses the tensors listed for
each hidden state (the total is ``sum <theta_A, pi(theta_B)>``, so every
coordinate step of Algorithm 1 solves its subproblem exactly and the total
never decreases; equivalently it minimises ``||theta_A - pi(theta_B)||``).
State matching uses the raw second moment ``sum_n x_A(n) x_B(n)^T`` of the
hidden states on the data, not a per-channel-normalised correlation, because
rescaling single channels is not invariant under section rotations.

scipy (for the Hungarian algorithm) is imported only when a permutation is
solved; ``import colu`` never imports this package.

Modules: ``states`` (hidden-state specs, read from a model or checked against
it), ``matching`` (the two matching algorithms), ``alignment`` (their result,
applied to model B and checked on a probe), ``barriers`` (the loss along the
linear path) and ``running`` (how models are run on data: evaluation mode,
seeded noise).
"""

from colu.align.alignment import Alignment
from colu.align.barriers import interpolate, kl_standard_normal, loss_barrier, loss_curve
from colu.align.matching import match_states, match_weights
from colu.align.states import HiddenState, infer_spec, resolve_spec
from colu.groups import Group, group_of, procrustes

__all__ = [
    "Alignment",
    "Group",
    "HiddenState",
    "group_of",
    "infer_spec",
    "interpolate",
    "kl_standard_normal",
    "loss_barrier",
    "loss_curve",
    "match_states",
    "match_weights",
    "procrustes",
    "resolve_spec",
]
