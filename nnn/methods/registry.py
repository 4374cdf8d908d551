"""The method registry: every correction class, found by any of its names.

``method_class(name)`` accepts a class name ("QBNorm"), a ``_target_`` ("nnn.methods.QBNorm"),
a ``conf/method`` option ("qb_norm") or a paper name ("QB-Norm", "DualIS"), in any case, with or
without "-" / "_". What a class declares (``tuned_params``, ``tuning_grid``, ``paper_name``, ...)
is described in ``nnn.methods.base``.
"""

from __future__ import annotations

from nnn.methods.base import RetrievalMethod
from nnn.methods.csls import CSLS
from nnn.methods.db_norm import DBNorm
from nnn.methods.dis_sim_local import DisSimLocal
from nnn.methods.dn import DN
from nnn.methods.identity import Identity
from nnn.methods.local_scaling import LocalScaling
from nnn.methods.mutual_proximity import MutualProximity
from nnn.methods.nnn import NNN
from nnn.methods.qb_norm import QBNorm

#: every method class, Identity (the baseline) included
METHODS: tuple[type[RetrievalMethod], ...] = (NNN, QBNorm, DBNorm, DN, CSLS, MutualProximity,
                                              LocalScaling, DisSimLocal, Identity)


def _key(name: str) -> str:
    return str(name).rsplit(".", 1)[-1].lower().replace("-", "").replace("_", "")


_BY_NAME = {_key(n): cls for cls in METHODS
            for n in (cls.__name__, cls.option, cls.paper_name, cls.dynamic_paper_name) if n}


def method_class(name: str) -> type[RetrievalMethod]:
    """The method class called ``name`` (module docstring); ``ValueError`` for an unknown one."""
    cls = _BY_NAME.get(_key(name))
    if cls is None:
        raise ValueError(f"unknown method {name!r}; use one of "
                         f"{[c.option for c in METHODS]} (or a class name such as 'NNN')")
    return cls


def paper_name(cls: type[RetrievalMethod], *, dynamic: bool = False) -> str:
    """The paper's name of ``cls``: "DualDIS" for ``DBNorm`` with ``dynamic``, else "DualIS"."""
    return (cls.dynamic_paper_name if dynamic else None) or cls.paper_name
