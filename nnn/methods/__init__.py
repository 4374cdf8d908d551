"""Hubness-correction methods, all with ``fit(gallery, query_bank=, gallery_bank=)``,
``score(queries)`` and ``search(queries, top_k)`` (see ``nnn.methods.base``), found by name
through ``method_class`` (``nnn.methods.registry``)."""

from nnn.methods._topk import ReferenceIndex
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
from nnn.methods.registry import METHODS, method_class, paper_name

__all__ = ["NNN", "QBNorm", "DBNorm", "DN", "CSLS", "MutualProximity", "LocalScaling",
           "DisSimLocal", "Identity", "RetrievalMethod",
           "ReferenceIndex", "METHODS", "method_class", "paper_name"]
