"""Meta-learning algorithms behind one interface (`MetaLearner`).

- `protonet`: Prototypical Networks (Snell et al. 2017), metric-based.
- `reptile`: Reptile (Nichol et al. 2018), first-order optimisation-based.
- `maml` and `fomaml`: MAML (Finn et al. 2017) with second-order gradients, and its
  first-order variant.
"""

from __future__ import annotations

from typing import Any

from edge_agent.algorithms.base import MetaLearner, Task
from edge_agent.algorithms.maml import FoMaml, Maml
from edge_agent.algorithms.protonet import ProtoNet
from edge_agent.algorithms.reptile import Reptile
from edge_agent.model import EmbeddingNet

ALGORITHMS: dict[str, type[MetaLearner]] = {
    learner.name: learner for learner in (ProtoNet, Reptile, Maml, FoMaml)
}


def make_learner(name: str, model: EmbeddingNet, *, steps: int, **options: Any) -> MetaLearner:
    """Build the learner `name` around `model`; `options` are its keyword hyper-parameters.

    Raises ValueError naming the known algorithms, or the options that `name` does not take.
    """
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    try:
        return ALGORITHMS[name](model, steps=steps, **options)
    except TypeError as exc:
        raise ValueError(f"invalid options for algorithm {name!r}: {sorted(options)} ({exc})") from exc


__all__ = ["ALGORITHMS", "FoMaml", "Maml", "MetaLearner", "ProtoNet", "Reptile", "Task", "make_learner"]
